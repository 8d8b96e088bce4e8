"""A single-writer, many-reader ring of frames in POSIX shared memory.

ZeroMQ carries only a FrameHeader naming (ring, slot, seq); the pixels stay here, so a 1080p
handoff costs a header, not a 6 MB copy.

Each slot starts with a 64-byte header whose first word is the sequence number of the frame it
holds. The writer sets it to 0 before touching the pixels and to the frame's sequence number
after (a seqlock). A reader checks the word before and after using the pixels: if it changed,
the frame was overwritten while the reader was behind, and the reader gets FrameOverwritten,
never a torn frame. Sequence numbers start at 1 and only grow, so a stale header can never
match a newer frame.

On x86-64 (total store order) the check is exact. On weakly ordered CPUs (ARM) a commit is
still safe to read, because the header reaches a reader only through a ZeroMQ send (a syscall,
hence a barrier) after it; but the overwrite check could miss a reuse whose pixel stores became
visible before its "0" store. With 8 slots that needs a reader 7 frames behind, which the
pipeline already drops as stale.
"""

from __future__ import annotations

import mmap
import os
import _posixshmem
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

RING_MAGIC = 0x474E495258500001  # "PXRING" + layout version 1
HEADER_BYTES = 64
SLOT_HEADER_BYTES = 64
SHM_DIR = Path("/dev/shm")


class FrameOverwritten(RuntimeError):
    """The slot named by a header was reused before the reader finished with it."""


class RingError(RuntimeError):
    """A ring could not be created or attached, or a frame does not fit it."""


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python < 3.13 registers every attached segment with a resource tracker that unlinks it
    # when *this* process exits: a reader would delete the writer's ring. Ownership is explicit
    # here: the writer unlinks on close and the launcher sweeps segments of crashed nodes.
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker internals differ across versions
        pass


def _shm_unlink(name: str) -> bool:
    """Unlink by name without touching the resource tracker (SharedMemory.unlink() would)."""
    try:
        _posixshmem.shm_unlink("/" + name.lstrip("/"))
    except FileNotFoundError:
        return False
    return True


def _allocate_pages(buf: memoryview) -> None:
    """Make the kernel allocate every page of a new segment now, at start-up, instead of inside the
    first frames' handoffs (a 1080p slot is 1500 pages: milliseconds of page faults on first use).
    Readers still map pages on first read, a cheaper fault that each slot pays once."""
    np.ndarray((len(buf),), np.uint8, buf)[::mmap.PAGESIZE] = 0


def _round_up(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


@dataclass
class Reservation:
    """A slot handed to the writer: fill `array` in place, then commit()."""

    slot: int
    seq: int
    array: np.ndarray


class FrameRingWriter:
    """Owns the segment: creates it (replacing a stale one of the same name) and unlinks it.

    Each slot holds `shape`'s bytes; a smaller frame of another shape fits too (its header names
    the shape, and readers view that many bytes), so a camera switching to a smaller mode keeps
    its ring. A larger one does not fit: the sender makes a new ring for it (perception.transport)."""

    def __init__(self, name: str, shape: tuple[int, ...], slots: int = 8) -> None:
        if slots < 2:
            raise RingError(f"ring {name}: needs at least 2 slots, got {slots}")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.slots = slots
        self.slot_capacity = int(np.prod(self.shape))
        self._stride = SLOT_HEADER_BYTES + _round_up(self.slot_capacity)
        size = HEADER_BYTES + slots * self._stride
        try:
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:
            # Left by a previous instance that was killed; nobody can be reading a segment whose
            # writer is gone and whose name is about to be reused, so reclaim it.
            unlink_segment(name)
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        _untrack(self._shm)
        buf = self._shm.buf
        _allocate_pages(buf)
        header = np.ndarray((4,), dtype=np.uint64, buffer=buf, offset=0)
        header[:] = (RING_MAGIC, slots, self.slot_capacity, 0)
        self._seq_words = [np.ndarray((1,), np.uint64, buf, HEADER_BYTES + i * self._stride) for i in range(slots)]
        self._arrays = [self._slot_array(i, self.shape) for i in range(slots)]  # the common case, built once
        self._next_seq = 1
        self._open_reservation: Reservation | None = None

    def _slot_array(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        return np.ndarray(shape, np.uint8, self._shm.buf, HEADER_BYTES + slot * self._stride + SLOT_HEADER_BYTES)

    def fits(self, shape: tuple[int, ...]) -> bool:
        return int(np.prod(shape)) <= self.slot_capacity

    def reserve(self, shape: tuple[int, ...] | None = None) -> Reservation:
        """The next slot, as an array of `shape` (default: the ring's), marked as being written;
        readers of its old frame will see it overwritten."""
        shape = self.shape if shape is None else tuple(int(s) for s in shape)
        if not self.fits(shape):
            raise RingError(f"ring {self.name}: a {shape} frame does not fit its slots of {self.slot_capacity} bytes")
        seq = self._next_seq
        slot = seq % self.slots
        self._seq_words[slot][0] = 0
        array = self._arrays[slot] if shape == self.shape else self._slot_array(slot, shape)
        self._open_reservation = Reservation(slot, seq, array)
        return self._open_reservation

    def commit(self, reservation: Reservation) -> None:
        if reservation is not self._open_reservation:
            raise RingError(f"ring {self.name}: commit of a reservation that is not the open one")
        self._seq_words[reservation.slot][0] = reservation.seq
        self._next_seq += 1
        self._open_reservation = None

    def write(self, frame: np.ndarray) -> Reservation:
        """Copy a frame into the next slot and commit it."""
        if frame.dtype != np.uint8:
            raise RingError(f"ring {self.name}: frame {frame.shape} {frame.dtype} is not uint8")
        reservation = self.reserve(frame.shape)
        np.copyto(reservation.array, frame)
        self.commit(reservation)
        return reservation

    def close(self) -> None:
        if self._shm is None:
            return
        # Views into the buffer must go before the mapping can close.
        self._seq_words = []
        self._arrays = []
        self._open_reservation = None
        self._shm.close()
        _shm_unlink(self.name)
        self._shm = None

    def __enter__(self) -> "FrameRingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameView:
    """Zero-copy access to a frame in the ring. Check `still_valid()` after using `array`."""

    __slots__ = ("array", "_seq_word", "_seq")

    def __init__(self, array: np.ndarray, seq_word: np.ndarray | None, seq: int) -> None:
        self.array = array
        self._seq_word = seq_word
        self._seq = seq

    def still_valid(self) -> bool:
        return self._seq_word is None or int(self._seq_word[0]) == self._seq

    def copy(self) -> np.ndarray:
        """A private copy, guaranteed untorn; raises FrameOverwritten otherwise."""
        data = self.array.copy()
        if not self.still_valid():
            raise FrameOverwritten(f"frame seq {self._seq} was overwritten during the copy")
        return data


class _AttachedRing:
    def __init__(self, name: str) -> None:
        try:
            self.shm = shared_memory.SharedMemory(name=name, create=False)
        except FileNotFoundError:
            raise RingError(f"ring {name}: shared memory segment does not exist") from None
        except (OSError, ValueError) as exc:  # a name the OS refuses, a segment we may not open
            raise RingError(f"ring {name}: cannot attach ({exc})") from None
        _untrack(self.shm)
        problem = self._check_layout()
        if problem:
            self.shm.close()
            raise RingError(f"ring {name}: {problem}")
        buf = self.shm.buf
        # Built once per attach: a handoff is then a dictionary lookup and two integer reads.
        self._seq_words = [np.ndarray((1,), np.uint64, buf, HEADER_BYTES + i * self.stride) for i in range(self.slots)]
        self._arrays: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def _check_layout(self) -> str | None:
        """Why this segment is not a frame ring whose every slot lies inside it (None if it is)."""
        if self.shm.size < HEADER_BYTES:
            return f"segment of {self.shm.size} bytes is too small to be a frame ring"
        magic, slots, capacity, _ = (int(v) for v in np.ndarray((4,), np.uint64, self.shm.buf, 0))
        if magic != RING_MAGIC:
            return "not a frame ring (bad magic)"
        self.slots, self.capacity = slots, capacity
        self.stride = SLOT_HEADER_BYTES + _round_up(capacity)
        if not 2 <= slots <= 256 or HEADER_BYTES + slots * self.stride > self.shm.size:
            return f"header claims {slots} slots of {capacity} bytes, more than its {self.shm.size} bytes"
        return None

    def _array(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        array = self._arrays.get((slot, shape))
        if array is None:
            nbytes = int(np.prod(shape))
            if slot >= self.slots or nbytes > self.capacity:
                raise RingError(f"slot {slot} / {nbytes} bytes is outside this ring ({self.slots} slots of {self.capacity})")
            array = np.ndarray(shape, np.uint8, self.shm.buf, HEADER_BYTES + slot * self.stride + SLOT_HEADER_BYTES)
            array.flags.writeable = False
            if len(self._arrays) >= 4 * self.slots:  # frames of ever new sizes (an image folder): stay bounded
                self._arrays.clear()
            self._arrays[(slot, shape)] = array
        return array

    def view(self, slot: int, seq: int, shape: tuple[int, ...]) -> FrameView:
        array = self._array(slot, shape)
        seq_word = self._seq_words[slot]
        if int(seq_word[0]) != seq:
            raise FrameOverwritten(f"slot {slot} no longer holds frame seq {seq} (reader fell behind)")
        return FrameView(array, seq_word, seq)

    def close(self) -> None:
        self._seq_words = []
        self._arrays.clear()
        try:
            self.shm.close()
        except BufferError:
            # A caller still holds a view; the mapping is released when that view is collected.
            pass


class FrameRingReader:
    """Attaches to rings by name on demand (a restarted writer creates a ring with a new name)."""

    def __init__(self) -> None:
        self._rings: dict[str, _AttachedRing] = {}

    def view(self, ring: str, slot: int, seq: int, shape: tuple[int, ...]) -> FrameView:
        attached = self._rings.get(ring)
        if attached is None:
            attached = _AttachedRing(ring)  # raises before the current ring is let go
            for old in self._rings.values():
                old.close()
            self._rings = {ring: attached}
        return attached.view(slot, seq, shape)

    def close(self) -> None:
        for attached in self._rings.values():
            attached.close()
        self._rings.clear()


def unlink_segment(name: str) -> bool:
    """Remove a shared memory segment by name; True if it existed."""
    return _shm_unlink(name)


def segments_with_prefix(prefix: str) -> list[str]:
    """Names of existing segments starting with `prefix` (Linux: listed from /dev/shm)."""
    if not SHM_DIR.is_dir():
        return []
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix))


def run_ring_prefix(run_id: str) -> str:
    """What the names of every ring of one run start with."""
    return f"perception-{run_id}-"


def ring_name(run_id: str, node: str) -> str:
    """Segment name for a node's frame ring: unique per process, sweepable per run and node."""
    return f"{run_ring_prefix(run_id)}{node}-{os.getpid()}"
