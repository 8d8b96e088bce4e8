"""Every message type that crosses a process boundary: its fields and their validation.

A message type is a dataclass, written once; its encoding and its JSON schema are derived from the
fields' types (perception.codec, the one codec for the wire and for recordings): compact JSON, versioned, never pickled, arrays
as base64 of their little-endian bytes. The same bytes go on the wire and into a recording, whose
channels declare the derived schema, so Foxglove decodes every channel without a plugin. Adding a
field is one edit, here. Pixels never travel in a message: they sit in shared memory or follow the
header as a second ZeroMQ part (perception.transport).

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
import os
import re
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

# 2: NodeState.FAILED, per-kind stamp limits; 3: detections carry tracks, level -1 (propagated);
# 4: JSON derived from the dataclasses (one codec for wire and recording); 5: every message names its clock;
# 6: detections name the network pass their boxes were measured by
WIRE_VERSION = 6
STAGE_NAME_CHARS = 16
MAX_STAMPS = 32
MAX_DETECTIONS = 4096
MAX_IMAGE_SIDE = 16384
MAX_RING_SLOTS = 256
MAX_COUNTERS = 1024
MAX_LIST_ITEMS = 256  # e.g. a watchdog's nodes_down
MAX_MESSAGE_BYTES = 1 << 20  # 4096 detections are ~300 kB
MAX_MEDIA_NS = 2**32 * 10**9 - 1  # a media time Foxglove can show (its timestamps hold u32 seconds)
LEVEL_PROPAGATE = -1  # Detections.exit_index of a frame that ran no network: tracks moved by optical flow
# Node names, stage names, shared-memory ring names: letters, digits and '._-', never a path.
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
NODE_NAME_CHARS = 64
RING_NAME_CHARS = 128
# This host's name, set by the launcher of a launch split over hosts; messages made here are in its
# clock. "local" when no launch names the host.
HOST_ENV = "PERCEPTION_HOST"
THIS_HOST = os.environ.get(HOST_ENV) or "local"


def level_name(exit_index: int) -> str:
    """'propagate' for LEVEL_PROPAGATE, else 'exit<k>'."""
    return "propagate" if exit_index == LEVEL_PROPAGATE else f"exit{exit_index}"


def _array(dtype: str, width: int, description: str, optional: bool = False):  # noqa: ANN202 - a dataclass field
    """A numpy array field: on the wire, base64 of its little-endian bytes, (n,) or (n, width)."""
    shape = (0, width) if width else (0,)
    factory = None if optional else (lambda: np.zeros(shape, np.dtype(dtype).newbyteorder("=")))
    metadata = {"dtype": dtype, "width": width, "description": description}
    if optional:
        return field(default=None, metadata=metadata)
    return field(default_factory=factory, metadata=metadata)


class MessageError(ValueError):
    """A message could not be decoded: truncated, corrupt, wrong version or wrong kind."""


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
    DEADLINE_MISS = 3  # the watchdog's fail-safes:
    NODE_DOWN = 4
    TOPIC_DOWN = 5  # a monitored topic below its error rate or silent (perception.topics)


FAILSAFE_REASONS = frozenset({Reason.DEADLINE_MISS, Reason.NODE_DOWN, Reason.TOPIC_DOWN})


class NodeState(enum.IntEnum):
    STARTING = 0
    OK = 1
    DEGRADED = 2
    STOPPING = 3  # leaving on purpose: the launcher ordered the stop, or the node finished its input
    FAILED = 4  # leaving on an error: down at once, the watchdog need not wait for silence


class TopicState(enum.IntEnum):
    """A monitored topic's health (perception.topic_monitor), as Autoware's topic_state_monitor reports it."""

    NOT_RECEIVED = 0
    OK = 1
    WARN_RATE = 2
    ERROR_RATE = 3
    TIMEOUT = 4
    IDLE = 5  # not expected now: its publishers are stopping, or its input is not flowing


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
        check_name(self.stage, "stage", STAGE_NAME_CHARS)
        if self.t_ns < 0:
            raise ValueError(f"stamp {self.stage}: time {self.t_ns} is negative")


@dataclass(frozen=True, kw_only=True)
class Message:
    """Fields shared by every message: the ancestry of the frame it descends from."""

    # The stamps a message of this kind can carry when it arrives; the hops after it add their own
    # and must stay within MAX_STAMPS, so a header arriving already full cannot make a node fail.
    MAX_STAMPS_IN: ClassVar[int] = 2
    frame_id: int
    capture_ns: int
    stamps: tuple[Stamp, ...] = ()
    # The host whose monotonic clock capture_ns and the stamps are in (perception.clock converts a
    # message from another host at the boundary); the host that makes a message by default.
    clock: str = field(default_factory=lambda: THIS_HOST)

    def __post_init__(self) -> None:
        check_name(self.clock, "clock")
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
        _check_range(self.media_ns, 0, MAX_MEDIA_NS, "media time")
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


@dataclass(frozen=True)
class NetworkPass:
    """The network pass a frame's boxes were measured by: the input size it ran at and its exit.
    The same object's box differs between passes (a smaller input or an earlier exit draws it
    taller or shorter; docs/BENCHMARKS.md), so a track's growth is fitted within one pass's boxes
    (perception.decision), never across a change of pass."""

    input_width: int
    input_height: int
    exit_index: int

    def __post_init__(self) -> None:
        _check_range(self.input_width, 1, MAX_IMAGE_SIDE, "network input width")
        _check_range(self.input_height, 1, MAX_IMAGE_SIDE, "network input height")
        _check_range(self.exit_index, 0, 126, "network pass exit")


@dataclass(frozen=True, kw_only=True, eq=False)
class Detections(Message):
    MAX_STAMPS_IN: ClassVar[int] = 24  # a frame's, plus the detector's per part
    media_ns: int = 0  # the frame's position in its source: replayed drives keep their own timeline
    image_width: int
    image_height: int
    # The depth that produced these detections: an early exit (0 = shallowest), or LEVEL_PROPAGATE
    # for a frame that ran no network (the tracks of earlier frames moved by optical flow).
    exit_index: int
    exit_count: int
    boxes: np.ndarray = _array("<f4", 4, "boxes, x1 y1 x2 y2 in image pixels")
    scores: np.ndarray = _array("<f4", 0, "confidence per box, 0..1")
    class_ids: np.ndarray = _array("<u2", 0, "class index per box (the model's class list)")
    # Per detection: its track (0: not tracked) and the track's centre velocity in px/s (x right, y down).
    track_ids: np.ndarray | None = _array("<u4", 0, "track id per box, 0: not tracked", optional=True)  # None: zeros
    velocities: np.ndarray | None = _array("<f4", 2, "track centre velocity per box, px/s (x right, y down)",
                                          optional=True)  # None: zeros
    # The pass the boxes were measured by: a network frame's own, a propagated frame's that of the
    # network frame its boxes were carried from. None: not known (a recording made before wire 6).
    measured_by: NetworkPass | None = None

    @property
    def level(self) -> str:
        return level_name(self.exit_index)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range(self.media_ns, 0, MAX_MEDIA_NS, "media time")
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
        if self.measured_by is not None and (
                self.measured_by.exit_index >= self.exit_count
                or self.exit_index not in (LEVEL_PROPAGATE, self.measured_by.exit_index)):
            raise ValueError(f"detections of exit {self.exit_index} of {self.exit_count} were measured by a pass "
                             f"that ran exit {self.measured_by.exit_index}")
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
            (self.frame_id, self.capture_ns, self.stamps, self.clock, self.media_ns, self.image_width, self.image_height)
            == (other.frame_id, other.capture_ns, other.stamps, other.clock, other.media_ns, other.image_width,
                other.image_height)
            and (self.exit_index, self.exit_count, self.measured_by)
            == (other.exit_index, other.exit_count, other.measured_by)
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
    ttc_s: float = field(default=math.inf, metadata={"inf_as_null": True})  # time to collision; inf: not closing

    def __post_init__(self) -> None:
        if len(self.box) != 4:
            raise ValueError(f"a target's box has {len(self.box)} values, not x1 y1 x2 y2")
        check_finite((self.score, *self.box), "the target's score or box")
        if not 0 <= self.score <= 1 or math.isnan(self.ttc_s) or self.ttc_s < 0:
            raise ValueError(f"target score {self.score} or ttc {self.ttc_s} is impossible")


@dataclass(frozen=True, kw_only=True)
class Decision(Message):
    MAX_STAMPS_IN: ClassVar[int] = 28  # the detections', plus the decision's
    action: Action
    reason: Reason
    decided_by: str  # node name: the decision node, or the watchdog for a fail-safe
    detail: str = ""
    target: Target | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_name(self.decided_by, "decided_by")

    @property
    def failsafe(self) -> bool:
        """A watchdog's BRAKE for a frame or a node it could not wait for, not a judgement of the scene."""
        return self.reason in FAILSAFE_REASONS


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """frame_id/capture_ns: the last frame this node finished with (0 before the first)."""

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
        _check_range(self.seq, 0, 2**63 - 1, "heartbeat seq")
        _check_range(self.sent_ns, 0, 2**63 - 1, "heartbeat sent_ns")
        _check_counters(self.counters)


def _check_counters(counters: dict[str, int]) -> None:
    if len(counters) > MAX_COUNTERS:
        raise ValueError(f"{len(counters)} counters exceed the limit of {MAX_COUNTERS}")
    for name in counters:
        check_name(name, "counter", 128)


_TOPIC_NAME = re.compile(r"(/[a-z0-9_]+)+")


@dataclass(frozen=True)
class TopicHealth:
    topic: str
    state: TopicState
    rate_hz: float  # over the monitor's window

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or len(self.topic) > 64 or not _TOPIC_NAME.fullmatch(self.topic):
            raise ValueError(f"topic {str(self.topic)[:64]!r} is not a topic name")
        check_finite(self.rate_hz, "a topic rate")
        if self.rate_hz < 0:
            raise ValueError(f"topic {self.topic} rate {self.rate_hz} is negative")


@dataclass(frozen=True, kw_only=True)
class WatchdogStatus(Message):
    state: SystemState
    depth_limit: int
    nodes_down: tuple[str, ...] = ()
    topics: tuple[TopicHealth, ...] = ()  # every monitored topic's state
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range(self.depth_limit, 0, 255, "depth_limit")
        for name in self.nodes_down:
            check_name(name, "node")
        _check_counters(self.counters)

    @property
    def topics_down(self) -> tuple[str, ...]:
        return tuple(t.topic for t in self.topics if t.state in (TopicState.ERROR_RATE, TopicState.TIMEOUT))


@dataclass(frozen=True, kw_only=True)
class Control(Message):
    """A command to a node; today the watchdog's depth ceiling for the detector."""

    target: str
    max_depth: int
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target != "*":
            check_name(self.target, "control target")
        _check_range(self.max_depth, 0, 255, "max_depth")


MESSAGE_TYPES: tuple[type[Message], ...] = (FrameHeader, Detections, Decision, Heartbeat, WatchdogStatus, Control)
