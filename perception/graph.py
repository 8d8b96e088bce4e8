"""The pipeline's graph, declared once: in the launch file, in dora-rs's form.

Every node entry of a launch file lists its `inputs:` as `input_name: node/output` (or a list of
them, read as one stream) and its `outputs:`; every node module declares its ports: `INPUTS`
(input name -> Port) and `OUTPUTS` (the topics it may publish). An output carries the topic whose
`output` it is (perception.topics). Every node also publishes `heartbeat`, declared or not.

`Graph` checks a launch against its modules' ports before anything starts (a typo in an edge is one
line naming it) and derives what used to be declared again elsewhere: who reads whom (placement
over hosts), who publishes a topic (recorder, live view, latency collector, topic monitor), and
each node's inputs as its config carries them (`node.inputs`, perception.node.NodeSettings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from perception.topics import HEARTBEAT, TOPICS, Topic, topic_of_output


@dataclass(frozen=True)
class Port:
    """One input of a node module: the topic it takes, and whether a launch must connect it."""

    topic: Topic
    required: bool = True


ANY_INPUTS = "any"  # INPUTS of a module that reads whatever it is given, under any name (recorder, live view)


@dataclass(frozen=True, order=True)
class Edge:
    """`node/output`: one publisher of one input."""

    node: str
    output: str

    @property
    def topic(self) -> Topic:
        return topic_of_output(self.output)

    @classmethod
    def parse(cls, ref: object) -> "Edge":
        """ValueError (naming the form) for anything but `node/output` with a known output."""
        if not isinstance(ref, str) or ref.count("/") != 1 or not all(ref.split("/")):
            raise ValueError(f"{ref!r} is not node/output")
        node, output = ref.split("/")
        topic_of_output(output)
        return cls(node, output)

    def __str__(self) -> str:
        return f"{self.node}/{self.output}"


def parse_inputs(raw: Mapping[str, object]) -> dict[str, tuple[Edge, ...]]:
    """`inputs:` as a launch file or a node config writes them -> input name -> its edges."""
    inputs = {}
    for name, value in raw.items():
        refs = value if isinstance(value, (list, tuple)) else [value]
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"input name {name!r} is not an identifier")
        if not refs:
            raise ValueError(f"input {name}: no publisher")
        edges = tuple(Edge.parse(ref) for ref in refs)
        if len({e.topic for e in edges}) > 1:
            raise ValueError(f"input {name}: {', '.join(map(str, edges))} carry different topics")
        if len(set(edges)) < len(edges):
            raise ValueError(f"input {name}: a publisher listed twice")
        inputs[name] = edges
    return inputs


@dataclass(frozen=True)
class GraphNode:
    """One node as the graph sees it: its inputs and declared outputs, and its module's ports."""

    name: str
    inputs: Mapping[str, tuple[Edge, ...]]
    outputs: tuple[str, ...]
    ports: Mapping[str, Port] | str  # its module's INPUTS, or ANY_INPUTS
    may_publish: tuple[Topic, ...]  # its module's OUTPUTS


class Graph:
    """A launch's nodes and edges, checked; `external`: publishers the launch does not start (the
    soak's rogue, a test harness), node name -> outputs, at their ipc path in the run directory."""

    def __init__(self, nodes: Sequence[GraphNode], source: str, external: Mapping[str, Sequence[str]] | None = None):
        self.nodes = {n.name: n for n in nodes}
        self.external = {name: tuple(outputs) for name, outputs in (external or {}).items()}
        self.source = source
        for node in nodes:
            self._check(node)

    def _check(self, node: GraphNode) -> None:
        where = f"{self.source}: nodes[{node.name}]"
        allowed = {t.output for t in node.may_publish} | {HEARTBEAT.output}
        for output in node.outputs:
            if output not in allowed:
                raise ValueError(f"{where}.outputs: {output!r} is not an output of its node module "
                                 f"(it has: {', '.join(sorted(allowed))})")
        if node.ports != ANY_INPUTS:
            for name in node.inputs:
                if name not in node.ports:
                    raise ValueError(f"{where}.inputs: {name!r} is not an input of its node module "
                                     f"(it has: {', '.join(node.ports) or 'none'})")
            missing = [name for name, port in node.ports.items() if port.required and name not in node.inputs]
            if missing:
                raise ValueError(f"{where}.inputs: {', '.join(missing)} not connected (as `{missing[0]}: node/output`)")
        for name, edges in node.inputs.items():
            for edge in edges:
                self._check_edge(f"{where}.inputs.{name}", edge)
                if node.ports != ANY_INPUTS and edge.topic is not node.ports[name].topic:
                    raise ValueError(f"{where}.inputs.{name}: {edge} carries {edge.topic.name}, the input takes "
                                     f"{node.ports[name].topic.name}")

    def _check_edge(self, where: str, edge: Edge) -> None:
        if edge.node in self.external:
            outputs = self.external[edge.node]
        elif edge.node in self.nodes:
            outputs = self.nodes[edge.node].outputs
        else:
            raise ValueError(f"{where}: {edge}: {edge.node!r} is no node of this launch "
                             f"(its nodes: {', '.join(sorted(self.nodes))})")
        if edge.output != HEARTBEAT.output and edge.output not in outputs:
            raise ValueError(f"{where}: {edge}: {edge.node} does not declare output {edge.output!r} "
                             f"(its outputs: {', '.join(outputs) or 'none'})")

    # -- what the rest derives from it --------------------------------------------------------
    def inputs_of(self, name: str) -> dict[str, list[str]]:
        """Node `name`'s inputs as its config carries them (NodeSettings.inputs)."""
        return {input_name: [str(e) for e in edges] for input_name, edges in self.nodes[name].inputs.items()}

    def read_from(self, name: str) -> set[str]:
        """The nodes node `name` reads any input from."""
        return {e.node for edges in self.nodes[name].inputs.values() for e in edges}

    def readers(self, name: str, output: str | None = None, listeners: bool = True) -> list[str]:
        """The nodes reading node `name` (its `output`, or any), in launch order; without the
        `listeners` (modules with ANY_INPUTS: a recorder, a live view), those that act on it."""
        return [n.name for n in self.nodes.values()
                if (listeners or n.ports != ANY_INPUTS)
                and any(e.node == name and (output is None or e.output == output)
                        for edges in n.inputs.values() for e in edges)]

    def publishers(self, topic: Topic) -> list[Edge]:
        """Every output of the launch carrying `topic` (every node's heartbeat), in launch order."""
        return [Edge(n.name, topic.output) for n in self.nodes.values() if carries(n, topic)]


def carries(node, topic: Topic) -> bool:
    """Whether launch entry or graph node `node` publishes `topic` (every node publishes its heartbeat)."""
    return topic is HEARTBEAT or topic.output in node.outputs


def every_output(nodes: Sequence) -> dict[str, list[str]]:
    """Inputs reading every output of launch entries `nodes` (anything with .name and .outputs), one
    input per topic, named after its output: what a recorder or a live view added to a launch reads."""
    inputs = {}
    for topic in TOPICS:
        edges = [f"{n.name}/{topic.output}" for n in nodes if carries(n, topic)]
        if edges:
            inputs[topic.output] = edges
    return inputs
