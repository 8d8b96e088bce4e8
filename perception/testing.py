"""Run a node body in-process, feeding its inputs and collecting its outputs, as dora-rs's testing
node does (apis/python/node/dora/testing.py): no sockets, no processes, the same code path.

    node = TestingNode("decision", inputs={"detections": ["detector/detections"]})
    node.feed(DETECTIONS, detections)          # any message; encoded, then decoded as on the wire
    decide(node, config)                        # the body runs until its inputs are used up
    node.published(DECISIONS)                   # what it would have sent

Inputs go through the real codec and the real Subscriber logic (validation, clock checks, latest
mode, per-input state), so what a test feeds is checked exactly as a live message would be.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from perception.latency import now_ns
from perception.interface import NodeBase
from perception.messages import Message, NodeState
from perception.codec import encode
from perception.node import NodeSettings
from perception.topics import Topic
from perception.transport import FrameReceiver, Subscriber


class FedInput(Subscriber):
    """A Subscriber whose messages come from a test instead of a socket."""

    def __init__(self, topic: Topic, latest: bool) -> None:  # noqa: D107 - no socket to open
        self._init_input(topic, latest)
        self.endpoints: list[str] = []
        self.queue: deque[list] = deque()

    def put(self, raw: bytes, pixels: bytes | None = None) -> None:
        parts = [self.topic_bytes, raw] + ([pixels] if pixels is not None else [])
        self.queue.append([SimpleNamespace(buffer=memoryview(part)) for part in parts])

    def _drain(self) -> list[list]:
        raw = list(self.queue)
        self.queue.clear()
        return raw

    def pending(self) -> bool:
        return bool(self.queue)

    def close(self) -> None:
        self.queue.clear()


@dataclass
class TestingNode(NodeBase):
    """The node interface (perception.interface) for a body run in-process. The body's loop ends
    once every fed input is used up and `linger_s` more has passed (time a watchdog needs for a
    deadline to fall due)."""

    __test__ = False  # not a pytest test class
    name: str = "node"
    linger_s: float = 0.0
    # Its edges and readers as a launch file gives them (NodeSettings.inputs, .readers): bodies that
    # ask who publishes an input (the watchdog) or who reads an output read them here.
    inputs: dict[str, list[str]] = field(default_factory=dict)
    readers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings = NodeSettings(inputs=self.inputs, readers=self.readers)
        self.counters: dict[str, int] = {}
        self.state = NodeState.STARTING
        self.sent: list[tuple[Topic, Message]] = []
        self.inputs: dict[Topic, FedInput] = {}
        self.frames_done: list[tuple[int, int]] = []
        self._stop = False
        self._idle_since: int | None = None

    # -- what a test does -----------------------------------------------------------------
    def feed(self, topic: Topic, message: Message, pixels: np.ndarray | None = None) -> None:
        """Queue `message` on `topic`; inline frames carry their pixels. A frames input is latest-only
        in the detector: call `expect(..., latest=True)` first to see supersession before the body runs."""
        self.expect(topic).put(encode(message), None if pixels is None else np.ascontiguousarray(pixels).tobytes())

    def feed_raw(self, topic: Topic, data: bytes) -> None:
        """Queue raw bytes, as a buggy or hostile publisher could send them."""
        self.expect(topic).put(data)

    def expect(self, topic: Topic, latest: bool = False) -> FedInput:
        if topic not in self.inputs:
            self.inputs[topic] = FedInput(topic, latest)
        return self.inputs[topic]

    def published(self, topic: Topic) -> list[Message]:
        return [message for t, message in self.sent if t == topic]

    # -- the Node interface ---------------------------------------------------------------
    def subscribe(self, name: str, topic: Topic, latest: bool, optional: bool = False) -> FedInput:
        """Input `name` is whatever the test feeds on `topic`, connected or not."""
        fed = self.expect(topic, latest)
        fed.latest = latest
        return fed


    def publish(self, topic: Topic, message: Message) -> None:
        if not isinstance(message, topic.message_type):
            raise TypeError(f"{topic.name} carries {topic.message_type.__name__}, not {type(message).__name__}")
        encode(message)  # what cannot go on the wire must fail here as it would live
        self.sent.append((topic, message))

    def poll(self, timeout_s: float) -> set[FedInput]:
        ready = {fed for fed in self.inputs.values() if fed.pending()}
        if ready:
            self._idle_since = None
            return ready
        now = now_ns()
        self._idle_since = self._idle_since or now
        if now - self._idle_since >= self.linger_s * 1e9:
            self._stop = True
        else:
            time.sleep(min(timeout_s, 0.005))
        return set()

    def ok(self) -> bool:
        return not self._stop

    def mark_frame_done(self, frame_id: int, capture_ns: int) -> None:
        super().mark_frame_done(frame_id, capture_ns)
        self.frames_done.append((frame_id, capture_ns))

    def frame_receiver(self) -> FrameReceiver:
        return FrameReceiver()
