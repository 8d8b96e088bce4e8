"""Every message type that crosses a process boundary, and its wire format.

Layout (little-endian, explicit, versioned; nothing is ever pickled):

    envelope  magic "PX" | version u8 | kind u8 | frame_id u64 | capture_ns i64 | n_stamps u8
    stamps    n_stamps x (stage: 16-byte ASCII, NUL padded | t_ns i64)
    body      kind-specific, see the _encode_*/_decode_* pairs below

Every message carries the frame id and capture time of the frame it descends from, plus a
stamp appended at each hop, so latency since capture can be computed anywhere
(see perception.latency). Decoding validates every length, enum and string and raises
MessageError with a one-line reason; a receiver drops and counts such messages.

Validation lives in each message's __post_init__, so it holds however a message is made: decoded
from the wire, read back from a recording, or built by a node. A message that passes cannot crash
its consumer: shapes and sizes are positive and bounded, floats are finite, names are plain ASCII
identifiers (a shared-memory ring name can never be a path), and every kind carries at most the
stamps it can legitimately have, so each hop downstream has room to add its own. What decoding
cannot check is time: a stamp from the future or far past is rejected by the receiver against its
own clock (perception.transport.Subscriber), never here.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

MAGIC = b"PX"
WIRE_VERSION = 3  # 2: NodeState.FAILED, per-kind stamp limits; 3: detections carry tracks, level -1 (propagated)
STAGE_NAME_BYTES = 16
MAX_STAMPS = 32
MAX_DETECTIONS = 4096
MAX_IMAGE_SIDE = 16384
LEVEL_PROPAGATE = -1  # Detections.exit_index of a frame that ran no network: tracks moved by optical flow


def level_name(exit_index: int) -> str:
    """'propagate' for LEVEL_PROPAGATE, else 'exit<k>'."""
    return "propagate" if exit_index == LEVEL_PROPAGATE else f"exit{exit_index}"
MAX_RING_SLOTS = 256
MAX_COUNTERS = 1024
# Node names, stage names, shared-memory ring names: letters, digits and '._-', never a path.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
NODE_NAME_CHARS = 64
RING_NAME_CHARS = 128

_ENVELOPE = struct.Struct("<2sBBQqB")
_STAMP = struct.Struct(f"<{STAGE_NAME_BYTES}sq")


class MessageError(ValueError):
    """A message could not be decoded: truncated, corrupt, wrong version or wrong kind."""


class MessageKind(enum.IntEnum):
    FRAME = 1
    DETECTIONS = 2
    DECISION = 3
    HEARTBEAT = 4
    WATCHDOG_STATUS = 5
    CONTROL = 6


class FrameTransport(enum.IntEnum):
    SHM = 1  # pixels sit in a shared-memory ring; the header names ring, slot and sequence
    INLINE = 2  # pixels follow the header as a second zero-copy ZeroMQ part (for tcp://)


class Action(enum.IntEnum):
    PROCEED = 0
    SLOW = 1
    BRAKE = 2


class Reason(enum.IntEnum):
    CLEAR = 0
    OBJECT_IN_PATH = 1
    CLOSING_FAST = 2
    DEADLINE_MISS = 3
    NODE_DOWN = 4


class NodeState(enum.IntEnum):
    STARTING = 0
    OK = 1
    DEGRADED = 2
    STOPPING = 3  # leaving on purpose: the launcher ordered the stop, or the node finished its input
    FAILED = 4  # leaving on an error: down at once, the watchdog need not wait for silence


class SystemState(enum.IntEnum):
    NOMINAL = 0
    DEGRADED = 1
    FAILSAFE = 2


_GOOD_NAMES: set[tuple[str, int]] = set()  # names seen valid: the same few recur in every message


def check_name(value: str, what: str, limit: int = NODE_NAME_CHARS) -> None:
    """A node, stage or ring name: 1..limit characters of letters, digits and '._-'; ValueError otherwise."""
    if (value, limit) in _GOOD_NAMES:
        return
    if not isinstance(value, str) or not 0 < len(value) <= limit or not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a name (1-{limit} of letters, digits, '._-')")
    if len(_GOOD_NAMES) < 4096:  # bounded: a stream of novel names must not grow it forever
        _GOOD_NAMES.add((value, limit))


def check_finite(values: np.ndarray | tuple | float, what: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{what} is not finite")


def _check_range(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is outside {low}..{high}")


@dataclass(frozen=True)
class Stamp:
    stage: str
    t_ns: int

    def __post_init__(self) -> None:
        check_name(self.stage, "stage", STAGE_NAME_BYTES)
        if self.t_ns < 0:
            raise ValueError(f"stamp {self.stage}: time {self.t_ns} is negative")


@dataclass(frozen=True, kw_only=True)
class Message:
    """Fields shared by every message: the ancestry of the frame it descends from."""

    KIND: ClassVar[MessageKind]
    # The stamps a message of this kind can carry when it arrives; the hops after it add their own
    # and must stay within MAX_STAMPS, so a header arriving already full cannot make a node fail.
    MAX_STAMPS_IN: ClassVar[int] = 2
    frame_id: int
    capture_ns: int
    stamps: tuple[Stamp, ...] = ()

    def __post_init__(self) -> None:
        _check_range(self.frame_id, 0, 2**63 - 1, "frame_id")
        _check_range(self.capture_ns, 0, 2**63 - 1, "capture_ns")
        if len(self.stamps) > self.MAX_STAMPS_IN:
            raise ValueError(f"{len(self.stamps)} stamps, a {type(self).__name__} carries at most {self.MAX_STAMPS_IN}")
        previous = self.capture_ns
        for stamp in self.stamps:
            if stamp.t_ns < previous:
                raise ValueError(f"stamp {stamp.stage} at {stamp.t_ns} is earlier than the hop before it ({previous})")
            previous = stamp.t_ns

    def stamped(self, stage: str, t_ns: int) -> "Message":
        """A copy with one more hop recorded; the original is left untouched."""
        return replace(self, stamps=self.stamps + (Stamp(stage, t_ns),))


@dataclass(frozen=True, kw_only=True)
class FrameHeader(Message):
    KIND: ClassVar[MessageKind] = MessageKind.FRAME
    MAX_STAMPS_IN: ClassVar[int] = 4  # capture, publish (+ a relay's)
    media_ns: int  # position of the frame in its source (video time), for replay and pacing
    width: int
    height: int
    channels: int
    transport: FrameTransport
    ring: str = ""  # shared-memory segment name (SHM transport only)
    slot: int = 0
    seq: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range(self.width, 1, MAX_IMAGE_SIDE, "frame width")
        _check_range(self.height, 1, MAX_IMAGE_SIDE, "frame height")
        if self.channels not in (1, 3, 4):
            raise ValueError(f"impossible frame shape {self.height}x{self.width}x{self.channels}")
        if self.transport == FrameTransport.SHM:
            check_name(self.ring, "ring", RING_NAME_CHARS)
            _check_range(self.slot, 0, MAX_RING_SLOTS - 1, "ring slot")
            _check_range(self.seq, 1, 2**63 - 1, "ring sequence")
        elif self.ring or self.slot or self.seq:
            raise ValueError("an inline frame names no ring, slot or sequence")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True, kw_only=True, eq=False)
class Detections(Message):
    KIND: ClassVar[MessageKind] = MessageKind.DETECTIONS
    MAX_STAMPS_IN: ClassVar[int] = 24  # a frame's, plus the detector's per part
    media_ns: int = 0  # the frame's position in its source: replayed drives keep their own timeline
    image_width: int
    image_height: int
    # The depth that produced these detections: an early exit (0 = shallowest), or LEVEL_PROPAGATE
    # for a frame that ran no network (the tracks of earlier frames moved by optical flow).
    exit_index: int
    exit_count: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # xyxy pixels
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.uint16))
    # Per detection: its track (0: not tracked) and the track's centre velocity in px/s (x right, y down).
    track_ids: np.ndarray | None = None  # uint32; None: all zeros
    velocities: np.ndarray | None = None  # float32 (N, 2); None: all zeros

    @property
    def level(self) -> str:
        return level_name(self.exit_index)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.boxes)
        if self.track_ids is None:
            object.__setattr__(self, "track_ids", np.zeros((n,), np.uint32))
        if self.velocities is None:
            object.__setattr__(self, "velocities", np.zeros((n, 2), np.float32))
        if (self.boxes.shape != (n, 4) or self.scores.shape != (n,) or self.class_ids.shape != (n,)
                or self.track_ids.shape != (n,) or self.velocities.shape != (n, 2)):
            raise ValueError(
                f"detections arrays disagree: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"class_ids {self.class_ids.shape}, track_ids {self.track_ids.shape}, velocities {self.velocities.shape}"
            )
        _check_range(n, 0, MAX_DETECTIONS, "detection count")
        _check_range(self.image_width, 1, MAX_IMAGE_SIDE, "image width")
        _check_range(self.image_height, 1, MAX_IMAGE_SIDE, "image height")
        _check_range(self.exit_count, 1, 127, "exit count")
        _check_range(self.exit_index, LEVEL_PROPAGATE, self.exit_count - 1, "exit")
        if n:
            check_finite(self.boxes, "a box")
            check_finite(self.scores, "a score")
            check_finite(self.velocities, "a velocity")
            if (self.boxes[:, 2:] < self.boxes[:, :2]).any():
                raise ValueError("a box has x2 < x1 or y2 < y1")
            if self.scores.min() < 0 or self.scores.max() > 1:
                raise ValueError("a score is outside 0..1")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (
            (self.frame_id, self.capture_ns, self.stamps, self.media_ns, self.image_width, self.image_height)
            == (other.frame_id, other.capture_ns, other.stamps, other.media_ns, other.image_width, other.image_height)
            and (self.exit_index, self.exit_count) == (other.exit_index, other.exit_count)
            and np.array_equal(self.boxes, other.boxes)
            and np.array_equal(self.scores, other.scores)
            and np.array_equal(self.class_ids, other.class_ids)
            and np.array_equal(self.track_ids, other.track_ids)
            and np.array_equal(self.velocities, other.velocities)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Target:
    """The object a decision is about."""

    class_id: int
    score: float
    box: tuple[float, float, float, float]
    ttc_s: float = math.inf  # time to collision estimate; inf when not closing

    def __post_init__(self) -> None:
        check_finite((self.score, *self.box), "the target's score or box")
        if not 0 <= self.score <= 1 or math.isnan(self.ttc_s) or self.ttc_s < 0:
            raise ValueError(f"target score {self.score} or ttc {self.ttc_s} is impossible")


@dataclass(frozen=True, kw_only=True)
class Decision(Message):
    KIND: ClassVar[MessageKind] = MessageKind.DECISION
    MAX_STAMPS_IN: ClassVar[int] = 28  # the detections', plus the decision's
    action: Action
    reason: Reason
    decided_by: str  # node name: the decision node, or the watchdog for a fail-safe
    detail: str = ""
    target: Target | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_name(self.decided_by, "decided_by")


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """frame_id/capture_ns: the last frame this node finished with (0 before the first)."""

    KIND: ClassVar[MessageKind] = MessageKind.HEARTBEAT
    node: str
    pid: int
    seq: int
    sent_ns: int
    state: NodeState
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_name(self.node, "node")
        _check_range(self.pid, 1, 2**32 - 1, "pid")
        _check_counters(self.counters)


def _check_counters(counters: dict[str, int]) -> None:
    if len(counters) > MAX_COUNTERS:
        raise ValueError(f"{len(counters)} counters exceed the limit of {MAX_COUNTERS}")
    for name in counters:
        check_name(name, "counter", 128)


@dataclass(frozen=True, kw_only=True)
class WatchdogStatus(Message):
    KIND: ClassVar[MessageKind] = MessageKind.WATCHDOG_STATUS
    state: SystemState
    depth_limit: int
    nodes_down: tuple[str, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.nodes_down:
            check_name(name, "node")
        _check_counters(self.counters)


@dataclass(frozen=True, kw_only=True)
class Control(Message):
    """A command to a node; today the watchdog's depth ceiling for the detector."""

    KIND: ClassVar[MessageKind] = MessageKind.CONTROL
    target: str
    max_depth: int
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target != "*":
            check_name(self.target, "control target")
        _check_range(self.max_depth, 0, 255, "max_depth")


# --- primitive writer/reader -------------------------------------------------------------


class _Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def pack(self, fmt: str, *values: object) -> None:
        self._parts.append(struct.pack("<" + fmt, *values))

    def text(self, value: str) -> None:
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError(f"string of {len(raw)} bytes is too long for the wire (max 65535)")
        self.pack("H", len(raw))
        self._parts.append(raw)

    def raw(self, data: bytes) -> None:
        self._parts.append(data)

    def counters(self, counters: dict[str, int]) -> None:
        self.pack("H", len(counters))
        for name in sorted(counters):
            self.text(name)
            self.pack("q", int(counters[name]))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self._view = memoryview(data)
        self._pos = 0
        self._what = what

    def take(self, n: int) -> memoryview:
        end = self._pos + n
        if end > len(self._view):
            raise MessageError(
                f"{self._what}: truncated at byte {self._pos} (needs {n} more, {len(self._view) - self._pos} left)"
            )
        chunk = self._view[self._pos : end]
        self._pos = end
        return chunk

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def one(self, fmt: str):  # noqa: ANN201 - a scalar of the format's type
        return self.unpack(fmt)[0]

    def text(self) -> str:
        n = self.one("H")
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageError(f"{self._what}: string at byte {self._pos - n} is not UTF-8") from exc

    def enum(self, enum_type: type[enum.IntEnum], fmt: str = "B") -> enum.IntEnum:
        value = self.one(fmt)
        try:
            return enum_type(value)
        except ValueError:
            raise MessageError(f"{self._what}: {value} is not a valid {enum_type.__name__}") from None

    def counters(self) -> dict[str, int]:
        return {self.text(): self.one("q") for _ in range(self.one("H"))}

    def array(self, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        return np.frombuffer(self.take(nbytes), dtype=dtype, count=count).reshape(shape).copy()

    def finish(self) -> None:
        if self._pos != len(self._view):
            raise MessageError(f"{self._what}: {len(self._view) - self._pos} unexpected trailing bytes")


# --- bodies -------------------------------------------------------------------------------


def _encode_frame(w: _Writer, m: FrameHeader) -> None:
    w.pack("qHHBBIQ", m.media_ns, m.width, m.height, m.channels, int(m.transport), m.slot, m.seq)
    w.text(m.ring)


def _decode_frame(r: _Reader, base: dict) -> FrameHeader:
    media_ns, width, height, channels = r.unpack("qHHB")
    transport = r.enum(FrameTransport)
    slot, seq = r.unpack("IQ")
    ring = r.text()
    return FrameHeader(
        **base, media_ns=media_ns, width=width, height=height, channels=channels,
        transport=transport, ring=ring, slot=slot, seq=seq,
    )


def _encode_detections(w: _Writer, m: Detections) -> None:
    w.pack("qHHbBI", m.media_ns, m.image_width, m.image_height, m.exit_index, m.exit_count, len(m.boxes))
    w.raw(np.ascontiguousarray(m.boxes, dtype="<f4").tobytes())
    w.raw(np.ascontiguousarray(m.scores, dtype="<f4").tobytes())
    w.raw(np.ascontiguousarray(m.class_ids, dtype="<u2").tobytes())
    w.raw(np.ascontiguousarray(m.track_ids, dtype="<u4").tobytes())
    w.raw(np.ascontiguousarray(m.velocities, dtype="<f4").tobytes())


def _decode_detections(r: _Reader, base: dict) -> Detections:
    media_ns, width, height, exit_index, exit_count, n = r.unpack("qHHbBI")
    if n > MAX_DETECTIONS:
        raise MessageError(f"detections: count {n} exceeds the limit of {MAX_DETECTIONS}")
    return Detections(
        **base, media_ns=media_ns, image_width=width, image_height=height, exit_index=exit_index, exit_count=exit_count,
        boxes=r.array("<f4", (n, 4)).astype(np.float32),
        scores=r.array("<f4", (n,)).astype(np.float32),
        class_ids=r.array("<u2", (n,)).astype(np.uint16),
        track_ids=r.array("<u4", (n,)).astype(np.uint32),
        velocities=r.array("<f4", (n, 2)).astype(np.float32),
    )


def _encode_decision(w: _Writer, m: Decision) -> None:
    w.pack("BB", int(m.action), int(m.reason))
    w.text(m.decided_by)
    w.text(m.detail)
    if m.target is None:
        w.pack("B", 0)
    else:
        t = m.target
        w.pack("BHd4dd", 1, t.class_id, t.score, *t.box, t.ttc_s)


def _decode_decision(r: _Reader, base: dict) -> Decision:
    action = r.enum(Action)
    reason = r.enum(Reason)
    decided_by = r.text()
    detail = r.text()
    has_target = r.one("B")
    target = None
    if has_target == 1:
        class_id, score, x1, y1, x2, y2, ttc = r.unpack("Hd4dd")
        target = Target(class_id=class_id, score=score, box=(x1, y1, x2, y2), ttc_s=ttc)
    elif has_target != 0:
        raise MessageError(f"decision: target flag {has_target} is neither 0 nor 1")
    return Decision(**base, action=action, reason=reason, decided_by=decided_by, detail=detail, target=target)


def _encode_heartbeat(w: _Writer, m: Heartbeat) -> None:
    w.text(m.node)
    w.pack("IQqB", m.pid, m.seq, m.sent_ns, int(m.state))
    w.counters(m.counters)


def _decode_heartbeat(r: _Reader, base: dict) -> Heartbeat:
    node = r.text()
    pid, seq, sent_ns = r.unpack("IQq")
    state = r.enum(NodeState)
    return Heartbeat(**base, node=node, pid=pid, seq=seq, sent_ns=sent_ns, state=state, counters=r.counters())


def _encode_watchdog(w: _Writer, m: WatchdogStatus) -> None:
    w.pack("BBH", int(m.state), m.depth_limit, len(m.nodes_down))
    for name in m.nodes_down:
        w.text(name)
    w.counters(m.counters)


def _decode_watchdog(r: _Reader, base: dict) -> WatchdogStatus:
    state = r.enum(SystemState)
    depth_limit, n_down = r.unpack("BH")
    nodes_down = tuple(r.text() for _ in range(n_down))
    return WatchdogStatus(**base, state=state, depth_limit=depth_limit, nodes_down=nodes_down, counters=r.counters())


def _encode_control(w: _Writer, m: Control) -> None:
    w.text(m.target)
    w.pack("B", m.max_depth)
    w.text(m.reason)


def _decode_control(r: _Reader, base: dict) -> Control:
    target = r.text()
    max_depth = r.one("B")
    return Control(**base, target=target, max_depth=max_depth, reason=r.text())


_CODECS = {
    MessageKind.FRAME: (FrameHeader, _encode_frame, _decode_frame),
    MessageKind.DETECTIONS: (Detections, _encode_detections, _decode_detections),
    MessageKind.DECISION: (Decision, _encode_decision, _decode_decision),
    MessageKind.HEARTBEAT: (Heartbeat, _encode_heartbeat, _decode_heartbeat),
    MessageKind.WATCHDOG_STATUS: (WatchdogStatus, _encode_watchdog, _decode_watchdog),
    MessageKind.CONTROL: (Control, _encode_control, _decode_control),
}


def encode(message: Message) -> bytes:
    """Serialize a message to its wire bytes."""
    _, encode_body, _ = _CODECS[message.KIND]
    if len(message.stamps) > MAX_STAMPS:
        raise ValueError(f"{len(message.stamps)} stamps exceed the limit of {MAX_STAMPS}")
    w = _Writer()
    w.raw(_ENVELOPE.pack(MAGIC, WIRE_VERSION, int(message.KIND), message.frame_id, message.capture_ns, len(message.stamps)))
    for stamp in message.stamps:
        name = stamp.stage.encode("ascii")
        if len(name) > STAGE_NAME_BYTES:
            raise ValueError(f"stage name {stamp.stage!r} is longer than {STAGE_NAME_BYTES} bytes")
        w.raw(_STAMP.pack(name, stamp.t_ns))
    encode_body(w, message)
    return w.getvalue()


def decode(data: bytes | memoryview, expect: type[Message] | None = None) -> Message:
    """Parse wire bytes; raises MessageError naming what is wrong. `expect` pins the type."""
    r = _Reader(data, "message")
    magic, version, kind_value, frame_id, capture_ns, n_stamps = r.unpack("2sBBQqB")
    if magic != MAGIC:
        raise MessageError(f"message: bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != WIRE_VERSION:
        raise MessageError(f"message: wire version {version}, this build speaks {WIRE_VERSION}")
    try:
        kind = MessageKind(kind_value)
    except ValueError:
        raise MessageError(f"message: unknown kind {kind_value}") from None
    cls, _, decode_body = _CODECS[kind]
    if expect is not None and cls is not expect:
        raise MessageError(f"message: got {cls.__name__}, expected {expect.__name__}")
    if n_stamps > MAX_STAMPS:
        raise MessageError(f"{cls.__name__}: {n_stamps} stamps exceed the limit of {MAX_STAMPS}")
    r._what = cls.__name__
    stamps = []
    for _ in range(n_stamps):
        raw_name, t_ns = r.unpack(f"{STAGE_NAME_BYTES}sq")
        try:
            stamps.append(Stamp(bytes(raw_name).rstrip(b"\0").decode("ascii"), t_ns))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MessageError(f"{cls.__name__}: bad stamp ({exc})") from None
    base = {"frame_id": frame_id, "capture_ns": capture_ns, "stamps": tuple(stamps)}
    try:
        message = decode_body(r, base)
    except (ValueError, struct.error) as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(f"{cls.__name__}: {exc}") from exc
    r.finish()
    return message
