"""A launch file's schema and its nodes' configs, resolved and validated before anything starts.

`LaunchFile` / `LaunchNode` / `HostSpec` are the YAML schema (perception.config checks types and
ranges); `build_graph` checks the graph its entries declare (perception.graph); and
`resolve_node_config` gives each node its config as the node itself will read it: the launch's
budget, params and edges merged, validated with the node's own CONFIG type and `check`, and
written so that it reads back exactly (`node_config_text`).
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from perception.clock import ClockConfig
from perception.config import ConfigError, Port, Range, check_ranges, from_mapping, load_yaml, set_key
from perception.graph import Graph, GraphNode, parse_inputs
from perception.latency import BudgetMs
from perception.security import check_key_name
from perception.topics import topic_of_output

MAX_RESTART_DELAY_S = 5.0


@dataclass(frozen=True)
class HostSpec:
    """A machine of a launch split over hosts."""

    address: str  # IP or name the other hosts reach it at
    bind: str | None = None  # interface its publishers bind (default: address; "*" for every interface)
    # Its launcher's clock server (perception.clock), which the other hosts' nodes ask for its time;
    # default base_port - 1 - its index among the hosts (below the nodes' ports, whatever is added
    # to one host's part, e.g. a live view, so every host computes the same).
    clock_port: Port | None = None

    def __post_init__(self) -> None:
        check_ranges(self)
        for what, value in (("address", self.address), ("bind", self.bind)):
            if value is not None and (not value or any(c in value for c in "/ ")):
                raise ValueError(f"{what} {value!r} is not an IP address or host name")


@dataclass(frozen=True)
class LaunchNode:
    name: str
    node: str  # module in nodes/, e.g. "capture"
    config: Path
    # Its edges (perception.graph): input name -> `node/output`, or a list of them read as one stream.
    inputs: dict[str, str | list[str]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # what others may read from it (besides `heartbeat`)
    params: dict[str, Any] = field(default_factory=dict)  # dotted config keys merged before validation
    restart: Literal["never", "on-failure", "always"] = "on-failure"
    max_restarts: Annotated[int, Range(0, 1_000_000)] = 5  # in a row: a node that ran stably in between (STABLE_AFTER_S) counts afresh
    restart_delay_s: Annotated[float, Range(0, MAX_RESTART_DELAY_S)] = 0.5
    shutdown_on_exit: bool = False  # when this node ends for good (done, or failed past restarts) the launch ends
    # A node the pipeline must not run without: when it fails for good (a refused config, or a crash
    # past its restarts) the launch brakes, stops every node and exits non-zero. The watchdog always is.
    critical: bool = False
    # SCHED_FIFO priority (1-99) for a node that must never wait behind the others for a core (the
    # watchdog); needs root or CAP_SYS_NICE, else the node runs at normal priority with a warning.
    realtime_priority: Annotated[int, Range(1, 99)] | None = None
    nice: Annotated[int, Range(-20, 19)] = 0  # -20 (first) .. 19 (last) among normal-priority processes
    # A running node whose last heartbeat is older than this is hung: killed and restarted per
    # `restart`. None: never (a node that may block for long on purpose).
    hang_timeout_s: Annotated[float, Range(0.01, 3600)] | None = 2.0
    startup_timeout_s: Annotated[float, Range(0.1, 3600)] = 30.0  # for the first heartbeat, which comes after models load
    host: str | None = None  # in a launch with hosts: the one this node runs on
    port: Port | None = None  # its tcp port when nodes on other hosts read it (default: base_port + its index)

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"node name {self.name!r} may hold only letters, digits, '-' and '_'")
        if not self.node.isidentifier() or self.node.startswith("_"):
            raise ValueError(f"node {self.node!r} is not a node module name (a file nodes/<name>.py)")
        try:
            parse_inputs(self.inputs)
            for output in self.outputs:
                topic_of_output(output)
        except ValueError as exc:
            raise ValueError(f"nodes[{self.name}]: {exc}") from None


@dataclass(frozen=True)
class LaunchFile:
    nodes: list[LaunchNode]
    status_period_s: Annotated[float, Range(0.1, 86_400)] = 5.0
    stop_timeout_s: Annotated[float, Range(0.1, 1.8)] = 1.5  # SIGTERM grace before SIGKILL; the whole stop stays under 2 s
    drain_s: Annotated[float, Range(0, 10)] = 0.0  # after a shutdown_on_exit node finishes cleanly: time for in-flight work downstream
    budget_ms: BudgetMs = 100.0  # capture to published decision: the one frame budget, handed to every node (node.budget_ms)
    hosts: dict[str, HostSpec] = field(default_factory=dict)  # name -> address; nodes say `host: NAME`
    base_port: Port = 7100  # tcp port of the node at index 0 of `nodes`, when it publishes for other hosts
    keys: Path | None = None  # CURVE keys folder (perception keys DIR): tcp endpoints need it...
    insecure: bool = False  # ...unless this says plain tcp is fine (a network nobody else can reach)
    clock: ClockConfig = field(default_factory=ClockConfig)  # how hosts convert each other's stamps
    # Publishers the launch does not start that its nodes may read (a test harness, the soak's rogue):
    # name -> outputs, at their ipc path in the run directory.
    external: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_ranges(self)
        for host in self.hosts:
            check_key_name(host)
        strays = [f"{n.name} (host {n.host})" for n in self.nodes if n.host is not None and n.host not in self.hosts]
        if strays:
            raise ValueError(f"nodes on hosts the launch file does not list under hosts: {', '.join(strays)}")
        if not 1 <= self.base_port <= 65535 - len(self.nodes):
            raise ValueError(f"base_port must leave room for a port per node below 65536, got {self.base_port}")
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"node names must be unique, repeated: {', '.join(duplicates)}")
        if not self.nodes:
            raise ValueError("a launch file needs at least one node")
        if any(n.node == "decision" for n in self.nodes) and not any(n.node == "watchdog" for n in self.nodes):
            raise ValueError("it decides (a decision node) but has no watchdog node: the pipeline never runs unwatched")


def load_launch_file(path: Path) -> LaunchFile:
    data = load_yaml(path)
    return from_mapping(LaunchFile, data, source=str(path), base_dir=path.parent)


def node_module(spec: LaunchNode, source: str) -> types.ModuleType:
    """The node's module in nodes/: its CONFIG type, its main and, optionally, its `check(config)`."""
    try:
        module = importlib.import_module(f"nodes.{spec.node}")
    except ModuleNotFoundError:
        raise ConfigError(f"{source}: nodes[{spec.name}].node: no node module 'nodes.{spec.node}'") from None
    if (not dataclasses.is_dataclass(getattr(module, "CONFIG", None)) or not callable(getattr(module, "main", None))
            or not hasattr(module, "INPUTS") or not hasattr(module, "OUTPUTS")):
        raise ConfigError(f"{source}: nodes[{spec.name}].node: 'nodes.{spec.node}' is not a node "
                          f"(no CONFIG, INPUTS, OUTPUTS and main)")
    return module


def build_graph(spec: LaunchFile, source: str) -> Graph:
    """The launch's graph, checked against its node modules' ports: ConfigError (one line) for an
    edge to a node or output that does not exist, an input its module does not have or that takes
    another topic, or a required input left unconnected."""
    nodes = []
    for node in spec.nodes:
        module = node_module(node, source)
        nodes.append(GraphNode(node.name, parse_inputs(node.inputs), tuple(node.outputs), module.INPUTS,
                               tuple(module.OUTPUTS)))
    try:
        return Graph(nodes, source, spec.external)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve_node_config(spec: LaunchNode, source: str, budget_ms: float = 100.0,
                        graph: Graph | None = None, class_names: list[str] | None = None) -> tuple[dict, Any]:
    """The node's config with the launch budget (node.budget_ms), params, its edges of `graph`
    (node.inputs, node.readers) and the class names of the detector it reads (node.class_names, see
    resolve_launch) merged, validated as the node itself will (the same from_mapping, then the node's
    own `check`: class names, model files); returns (plain data, typed config)."""
    module = node_module(spec, source)
    config_type = module.CONFIG
    data = load_yaml(spec.config) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{spec.config}: top level must be a mapping")
    for key, origin in (("inputs", "graph (inputs: / outputs: of its entry)"), ("readers", "graph (inputs: / outputs: of its entry)"),
                        ("class_names", "graph and the model of the detector it reads"),
                        ("budget_ms", "budget_ms, the one frame budget of every node")):
        if key in (data.get("node") or {}) or f"node.{key}" in spec.params:
            raise ConfigError(f"{source}: nodes[{spec.name}]: node.{key} comes from the launch file's {origin}, "
                              f"not from a node's config")
    for key, value in spec.params.items():
        set_key(data, key, value, f"{source}: nodes[{spec.name}].params")
    set_key(data, "node.budget_ms", budget_ms, f"{source}: budget_ms")
    if graph is not None:
        set_key(data, "node.inputs", graph.inputs_of(spec.name), source)
        set_key(data, "node.readers", {output: graph.readers(spec.name, output, listeners=False) for output in spec.outputs}, source)
    if class_names:
        set_key(data, "node.class_names", class_names, source)
    where = f"{spec.config} (node {spec.name})"
    typed = from_mapping(config_type, data, source=where, base_dir=spec.config.parent)
    check_node_config(module, typed, where)
    return _absolutize(typed, data), typed


def resolve_launch(spec: LaunchFile, source: str, graph: Graph) -> list[tuple[LaunchNode, dict, Any]]:
    """Every node's resolved config (resolve_node_config), in launch order. The class ids in Detections
    mean what the detector's model says: a node reading a detector's detections gets that model's
    class names (node.class_names), so a decision node, recorder or live view never labels or judges
    them by another list. The detectors are resolved first; a node reading detectors whose models
    name different classes is a ConfigError."""
    from perception.detection.manifest import load_manifest  # the detector's package, only where a launch has one
    from perception.topics import DETECTIONS

    publishers = {n.name for n in spec.nodes if DETECTIONS.output in graph.nodes[n.name].outputs}
    resolved = {n.name: resolve_node_config(n, source, spec.budget_ms, graph) for n in spec.nodes if n.name in publishers}
    names = {name: load_manifest(typed.model).class_names() for name, (_, typed) in resolved.items()
             if isinstance(getattr(typed, "model", None), Path)}
    for node in spec.nodes:
        if node.name in resolved:
            continue
        read = sorted({e.node for edges in graph.nodes[node.name].inputs.values() for e in edges
                       if e.output == DETECTIONS.output and e.node in names})
        lists = {tuple(names[d]) for d in read}
        if len(lists) > 1:
            raise ConfigError(f"{source}: nodes[{node.name}] reads detections of {', '.join(read)}, whose models "
                              "name different classes: the class ids would mean different things")
        resolved[node.name] = resolve_node_config(node, source, spec.budget_ms, graph, list(next(iter(lists), ())))
    return [(node, *resolved[node.name]) for node in spec.nodes]


def check_node_config(module: types.ModuleType, typed: Any, where: str) -> None:
    """Run a node module's own `check(config)`, if it has one, as ConfigError naming the config."""
    check = getattr(module, "check", None)
    if check is not None:
        try:
            check(typed)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def node_config_text(data: dict, typed: Any, base_dir: Path, where: str) -> str:
    """The config a node reads from the run directory, as YAML, checked to read back as exactly the
    config validated here: a value that would change on the way (JSON's Infinity once became a string
    that the watchdog refused, leaving the pipeline unwatched) stops the launch before it starts."""
    text = yaml.safe_dump(data, sort_keys=False)
    if from_mapping(type(typed), yaml.safe_load(text), source=where, base_dir=base_dir) != typed:
        raise ConfigError(f"{where}: would not read back as validated from the run directory; not starting")
    return text


def _absolutize(typed: Any, data: dict) -> dict:
    """Replace relative paths in `data` by the resolved ones of `typed`, so the copy in the run
    directory means the same as the original wherever it is read from."""
    out = dict(data)
    for f in dataclasses.fields(typed):
        value = getattr(typed, f.name)
        if f.name not in out:
            continue
        if isinstance(value, Path):
            out[f.name] = str(value)
        elif dataclasses.is_dataclass(value) and isinstance(out[f.name], dict):
            out[f.name] = _absolutize(value, out[f.name])
    return out
