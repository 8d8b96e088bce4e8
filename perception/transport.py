"""Pub/sub over ZeroMQ: endpoints, bounded queues, latest-value reads, frames by shared memory.

Wire: every message is a multipart ZeroMQ message [topic, encoded message, *pixel buffers].
Topics are exact (checked on receipt, not just prefix-filtered). Every queue is bounded by a
high-water mark; a `latest` subscriber drains its socket and keeps only the newest message,
which is what a consumer of frames wants: a stale frame is worth nothing. (ZMQ_CONFLATE would
do the same but cannot carry multipart messages, which inline frames need.)

Endpoints: a publisher is referred to by node name, resolved to ipc://{run_dir}/{name}.pub,
or by an explicit URL (tcp://host:port for another host; "{run_dir}" is substituted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import zmq

from perception.latency import now_ns
from perception.clock import ClockSync
from perception.messages import THIS_HOST, FrameHeader, FrameTransport, Message, MessageError, Stamp
from perception.codec import decode, encode
from perception.reconnect import Connections
from perception.security import CurveClient, CurveServer
from perception.shm_ring import FrameOverwritten, FrameRingReader, FrameRingWriter, FrameView, RingError, ring_name
from perception.topics import FRAMES, Topic

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

LATEST_HWM = 4
QUEUE_HWM = 1000


def resolve_endpoint(ref: str, run_dir: Path) -> str:
    """A node name or an endpoint URL -> an endpoint URL."""
    if "://" in ref:
        return ref.replace("{run_dir}", str(run_dir))
    if not ref or "/" in ref:
        raise ValueError(f"{ref!r} is neither a node name nor an endpoint URL")
    return f"ipc://{run_dir}/{ref}.pub"


class Publisher:
    """One socket per node, bound at the node's endpoint; publishes any number of topics.

    An XPUB rather than a PUB so the node can see subscriptions arrive: a replay source waits for
    its consumers before the first frame instead of losing frames to ZeroMQ's slow-joiner gap.
    """

    def __init__(self, context: zmq.Context, endpoint: str, hwm: int = QUEUE_HWM,
                 curve: CurveServer | None = None) -> None:
        """`curve`: be a CURVE server (perception.security), as a publisher on tcp must be. Its
        subscriptions still arrive here (XPUB_VERBOSER), once a client's handshake is accepted."""
        self.endpoint = endpoint
        self.socket = context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscribe and unsubscribe, duplicates too
        if curve is not None:
            curve.apply(self.socket)
        self.subscriptions: dict[bytes, int] = {}
        if endpoint.startswith("ipc://"):
            Path(endpoint[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close()
            raise RuntimeError(f"cannot bind publisher at {endpoint}: {exc}") from None

    def publish(self, topic: Topic, message: Message, buffers: tuple = ()) -> None:
        if not isinstance(message, topic.message_type):
            raise TypeError(f"{topic.name} carries {topic.message_type.__name__}, not {type(message).__name__}")
        # NOBLOCK: a publisher never waits for a slow subscriber; it drops at the HWM instead.
        self.socket.send_multipart([topic.name.encode(), encode(message), *buffers], flags=zmq.NOBLOCK,
                                   copy=not buffers)

    def subscriber_count(self, topic: Topic) -> int:
        """Subscribers currently subscribed to exactly `topic` (processes subscription events first)."""
        while True:
            try:
                event = self.socket.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] in (b"\x00", b"\x01"):
                delta = 1 if event[:1] == b"\x01" else -1
                self.subscriptions[event[1:]] = self.subscriptions.get(event[1:], 0) + delta
        return self.subscriptions.get(topic.name.encode(), 0)

    def close(self, linger_ms: int = 0) -> None:
        """`linger_ms`: how long queued messages (a node's last heartbeat) may still take to go out."""
        self.socket.close(linger=linger_ms)


@dataclass
class Received(Generic[M]):
    message: M
    parts: list  # the raw multipart frames, for inline pixel buffers
    # How far off its stamps may be: 0 from this host, the clock estimate's uncertainty from another
    # (they were converted into this host's clock on receipt, perception.clock).
    clock_uncertainty_ns: int = 0


def newest_stamp_ns(message: Message) -> int:
    """The latest time a message claims: its capture, a hop's stamp or a heartbeat's send time."""
    newest = max(message.capture_ns, message.stamps[-1].t_ns if message.stamps else 0)
    return max(newest, getattr(message, "sent_ns", 0))


class Subscriber(Generic[M]):
    """A SUB socket for one topic of one or more publishers.

    Every message is decoded and validated (perception.messages) and its stamps are checked
    against this host's clock: one claiming a time in the future cannot be true (the clock is
    CLOCK_MONOTONIC, shared by every process of the host) and is dropped and counted as
    `bad_stamp`, like a malformed one, so a single forged stamp cannot move a deadline.
    Per-input state for the node's loop, like openpilot's SubMaster: `updated` (this poll brought
    a valid message), `last` (the newest valid message), `last_ns` (when it arrived), `alive()`.
    """

    def __init__(
        self,
        context: zmq.Context,
        endpoints: str | list[str],
        topic: Topic,
        latest: bool,
        curve: CurveClient | None = None,
    ) -> None:
        """`curve`: connect as a CURVE client to the endpoints it has a publisher's key for
        (perception.security); the others (ipc) stay plain."""
        self._init_input(topic, latest)
        self.socket = context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, LATEST_HWM if latest else QUEUE_HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, self.topic_bytes)
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self._connections = Connections(self.socket, self.endpoints, curve)

    def _init_input(self, topic: Topic, latest: bool) -> None:
        """The input's own state, whatever delivers its messages (a socket here, a test elsewhere)."""
        self.topic = topic
        self.topic_bytes = topic.name.encode()
        self.message_type = topic.message_type
        self.latest = latest
        self.received = 0
        self.malformed = 0
        self.bad_stamp = 0
        self.unsynced = 0  # from a host whose clock this one cannot convert from (perception.clock)
        self.clocks: ClockSync | None = None  # set by the node: converts messages from other hosts
        self.superseded = 0  # messages skipped because a newer one was already queued (latest mode)
        self.updated = False
        self.last: M | None = None
        self.last_ns: int | None = None
        self._last_warning_ns = 0

    def receive(self) -> list[Received[M]]:
        """Everything queued now, oldest first; in latest mode only the newest valid message. Never blocks."""
        raw = self._drain()
        if not self.latest:
            return self._note([r for r in map(self._parse, raw) if r is not None])
        for index in range(len(raw) - 1, -1, -1):
            received = self._parse(raw[index])
            if received is not None:
                self.superseded += index  # older messages, never decoded
                return self._note([received])
        return self._note([])

    def _drain(self) -> list[list]:
        """The raw multipart messages queued now (each part has a `.buffer`)."""
        raw: list[list] = []
        # Ask ZMQ_EVENTS rather than catch zmq.Again: an exception per drain costs more than the read.
        while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            raw.append(self.socket.recv_multipart(copy=False))
        return raw

    def pending(self) -> bool:
        """Input is waiting (what a poller would report)."""
        return bool(self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def reconnect_dropped(self) -> None:
        """Connect again to publishers ZeroMQ gave up on (a squatter on their port, perception.reconnect);
        cheap, call it from the loop that reads this subscriber."""
        self._connections.check()

    def alive(self, timeout_ns: int, at_ns: int | None = None) -> bool:
        """A valid message arrived within `timeout_ns`."""
        return self.last_ns is not None and (now_ns() if at_ns is None else at_ns) - self.last_ns <= timeout_ns

    def _note(self, received: list[Received[M]]) -> list[Received[M]]:
        self.updated = bool(received)
        if received:
            self.last, self.last_ns = received[-1].message, now_ns()
        return received

    def _parse(self, parts: list) -> Received[M] | None:
        try:
            if bytes(parts[0].buffer) != self.topic_bytes:
                raise MessageError(f"topic {bytes(parts[0].buffer)[:32]!r} is not {self.topic.name!r}")
            if len(parts) < 2:
                raise MessageError("multipart message has no payload")
            message = decode(parts[1].buffer, expect=self.message_type)
        except MessageError as exc:
            self.malformed += 1
            self._warn(f"dropped malformed message on {self.topic.name}: {exc}")
            return None
        uncertainty = 0
        local = self.clocks.host if self.clocks is not None else THIS_HOST
        if message.clock != local:  # stamps in another host's clock: converted here, or not used at all
            converted = self.clocks.to_local(message) if self.clocks is not None else None
            if converted is None:
                self.unsynced += 1
                self._warn(f"dropped {self.message_type.__name__} {message.frame_id} on {self.topic.name}: "
                           f"no trusted estimate of host {message.clock!r}'s clock")
                return None
            message, uncertainty = converted
        claimed, now = newest_stamp_ns(message), now_ns()
        if claimed > now + uncertainty:
            self.bad_stamp += 1
            self._warn(f"dropped {self.message_type.__name__} {message.frame_id} on {self.topic.name}: "
                       f"stamped {(claimed - now) / 1e6:.1f} ms in the future")
            return None
        self.received += 1
        return Received(message, parts, uncertainty)  # type: ignore[arg-type]

    def _warn(self, text: str) -> None:
        now = now_ns()
        if now - self._last_warning_ns > 1_000_000_000:  # at most one line a second
            log.warning("%s (%d malformed, %d bad stamps so far)", text, self.malformed, self.bad_stamp)
            self._last_warning_ns = now

    def close(self) -> None:
        self._connections.close()
        self.socket.close(linger=0)


class FrameSender:
    """Publishes frames: pixels into a shared-memory ring (default) or inline as a zero-copy part.

    Frames may change size mid-stream (a camera switching mode, an image folder of mixed sizes).
    A smaller frame goes into the ring's slots as they are; a larger one gets a new ring sized for
    it, under a new name (`NAME-2`, ...) that readers attach when a header names it. The ring before
    it stays until the next such change, so a reader still behind reads its last frames there."""

    def __init__(self, publisher: Publisher, run_id: str, node: str, transport: FrameTransport, slots: int = 8) -> None:
        self.publisher = publisher
        self.transport = transport
        self.slots = slots
        self._ring_name = ring_name(run_id, node)
        self._rings_made = 0
        self.ring: FrameRingWriter | None = None
        self._previous: FrameRingWriter | None = None

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Make the ring hold frames of `shape` now, so its one-time cost is not part of a frame's latency."""
        if self.transport != FrameTransport.SHM or (self.ring is not None and self.ring.fits(shape)):
            return
        self._rings_made += 1
        name = self._ring_name if self._rings_made == 1 else f"{self._ring_name}-{self._rings_made}"
        ring = FrameRingWriter(name, tuple(shape), self.slots)
        if self._previous is not None:
            self._previous.close()
        self._previous, self.ring = self.ring, ring

    def reserve(self, shape: tuple[int, ...] | None):
        """A slot to decode the next frame into, when the ring exists and holds `shape` and the transport is SHM."""
        if self.ring is None or self.transport != FrameTransport.SHM or shape is None or not self.ring.fits(shape):
            return None
        return self.ring.reserve(shape)

    def send(self, frame: np.ndarray, *, frame_id: int, capture_ns: int, media_ns: int,
             stamps: tuple[Stamp, ...] = (), reservation=None, stage: str = "publish") -> FrameHeader:
        """Publish `frame` under a header built here, once the pixels are in place: its shape and
        transport fields come from the frame and the ring, and a `stage` stamp ends `stamps`.
        Returns the header sent."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
            raise RingError(f"frame of shape {frame.shape} {frame.dtype} is not an HxWxC uint8 image")
        height, width, channels = frame.shape
        origin = {"frame_id": frame_id, "capture_ns": capture_ns, "media_ns": media_ns,
                  "width": width, "height": height, "channels": channels}
        if self.transport == FrameTransport.INLINE:
            header = FrameHeader(**origin, stamps=stamps + (Stamp(stage, now_ns()),), transport=FrameTransport.INLINE)
            self.publisher.publish(FRAMES, header, (np.ascontiguousarray(frame).data,))
            return header
        self.prepare(frame.shape)
        if reservation is not None and reservation.array is frame:
            self.ring.commit(reservation)
        else:
            # The source could not decode in place: copy. An unused reservation is simply replaced
            # (its slot still reads as "being written", so nobody can read it).
            reservation = self.ring.write(frame)
        header = FrameHeader(**origin, stamps=stamps + (Stamp(stage, now_ns()),), transport=FrameTransport.SHM,
                             ring=self.ring.name, slot=reservation.slot, seq=reservation.seq)
        self.publisher.publish(FRAMES, header)
        return header

    def close(self) -> None:
        for ring in (self.ring, self._previous):
            if ring is not None:
                ring.close()
        self.ring = self._previous = None


class FrameReceiver:
    """Turns a received frame header into pixels, from the ring or the inline part.

    With `ring_prefix` (this run's, see perception.shm_ring.ring_name), a header naming any other
    shared-memory segment is refused: a forged header cannot make a node map memory that is not
    a frame ring of its own pipeline."""

    def __init__(self, ring_prefix: str | None = None) -> None:
        self._rings = FrameRingReader()
        self._ring_prefix = ring_prefix

    def view(self, received: Received[FrameHeader]) -> FrameView:
        """Zero-copy view; raises FrameOverwritten if the ring slot was already reused, RingError if unreadable."""
        header = received.message
        if header.transport == FrameTransport.INLINE:
            if len(received.parts) != 3:
                raise RingError(f"inline frame {header.frame_id} arrived without its pixel part")
            pixels = received.parts[2].buffer
            if len(pixels) != header.nbytes:
                raise RingError(f"inline frame {header.frame_id}: {len(pixels)} bytes for a {header.shape} frame")
            return FrameView(np.frombuffer(pixels, np.uint8).reshape(header.shape), None, 0)
        if self._ring_prefix is not None and not header.ring.startswith(self._ring_prefix):
            raise RingError(f"frame {header.frame_id} names ring {header.ring!r}, not one of this run's")
        return self._rings.view(header.ring, header.slot, header.seq, header.shape)

    def close(self) -> None:
        self._rings.close()


__all__ = [
    "FrameOverwritten",
    "FrameReceiver",
    "FrameSender",
    "Publisher",
    "Received",
    "RingError",
    "Subscriber",
    "resolve_endpoint",
]
