"""The node interface, once: what a node body may call, and the part of it every implementation shares.

`NodeInterface` is the Protocol a node body (nodes/*.py) is written against; the real node
(perception.node.Node: sockets, heartbeats, signals) and the in-process one (perception.testing.
TestingNode: fed inputs, collected outputs) implement it. `NodeBase` holds what both do the same
way: inputs resolved from the launch file's edges, counters, the last frame done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from perception.config import ConfigError
from perception.graph import Edge
from perception.messages import Message, NodeState
from perception.topics import Topic

if TYPE_CHECKING:
    from perception.node import NodeSettings
    from perception.transport import FrameReceiver, Subscriber


class NodeInterface(Protocol):
    name: str
    settings: "NodeSettings"
    counters: dict[str, int]
    state: NodeState

    def subscribe(self, name: str, topic: Topic, latest: bool, optional: bool = False) -> "Subscriber | None": ...
    def input_edges(self, name: str, optional: bool = True) -> tuple[Edge, ...]: ...
    def input_publishers(self, name: str) -> list[str]: ...
    def publish(self, topic: Topic, message: Message) -> None: ...
    def poll(self, timeout_s: float) -> set: ...
    def ok(self) -> bool: ...
    def count(self, name: str, n: int = 1) -> None: ...
    def mark_frame_done(self, frame_id: int, capture_ns: int) -> None: ...
    def frame_receiver(self) -> "FrameReceiver": ...


class NodeBase:
    """Inputs, counters and progress, the same for every implementation of NodeInterface."""

    name: str
    settings: "NodeSettings"
    counters: dict[str, int]
    state: NodeState
    last_frame: tuple[int, int] = (0, 0)  # (frame id, capture stamp) of the newest frame this node finished

    def input_edges(self, name: str, optional: bool = True) -> tuple[Edge, ...]:
        """The `node/output`s input `name` reads; () for one not connected if `optional`."""
        edges = self.settings.edges.get(name, ())
        if not edges and not optional:
            raise ConfigError(f"node {self.name}: input {name!r} is not connected (inputs: {name}: node/output)")
        return edges

    def input_publishers(self, name: str) -> list[str]:
        """The node names input `name` reads from."""
        return [edge.node for edge in self.input_edges(name)]

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def mark_frame_done(self, frame_id: int, capture_ns: int) -> None:
        self.last_frame = (frame_id, capture_ns)
        if self.state == NodeState.STARTING:
            self.state = NodeState.OK
