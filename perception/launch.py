"""Start, supervise and stop a set of node processes described by a launch file.

    perception launch launch/replay.yaml [--duration S] [--status-file F]
    perception launch launch/two_hosts.yaml --host camera [--keys DIR]   # one host's part of a split launch

Before starting anything, every node's config (with its launch params merged in) is validated
against the node's CONFIG type, so a misspelled key fails the launch, not a node at 2 a.m.
Crashed nodes are restarted per their policy with a growing delay. A hung node (alive, but its
heartbeat older than `hang_timeout_s`, or no first heartbeat within `startup_timeout_s`) is killed
and restarted the same way, like openpilot's manager does, while the watchdog keeps braking.
Ctrl-C or SIGTERM stops all nodes within stop_timeout_s (SIGTERM, then SIGKILL), then removes the
run's ipc sockets and any shared memory a killed node left behind. Before it signals a node the
launcher leaves a stop order in the run directory: only a node stopped that way (or one that
finished its input) leaves quietly; any other exit is a node down for the watchdog.

The run directory is private (0700) and records its launcher's pid: a later launch removes run
directories, and their shared memory, whose launcher is gone (killed with SIGKILL, say). Children
also die with the launcher (PR_SET_PDEATHSIG).

Across hosts: a launch file may list `hosts` and put each node on one (`host: NAME`); each host
runs its part with `--host NAME`, every part reading the same launch file. A node that a node on
another host reads from (its config names it: frames_from, rules.monitored, wait_for_nodes, ...)
publishes on tcp://{its host's address}:{its port} (`port`, default base_port + its index in the
file), as a CURVE server when the launch has `keys` (perception.security); every node is told where
those nodes are (PERCEPTION_NETWORK, perception.node.with_launch_network). Every other node stays on
ipc. The layout is computed from the file alone, so both parts agree on it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import secrets
import tempfile
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
import zmq

from perception.config import ConfigError, Port, Range, check_ranges, from_mapping, load_yaml, set_key
from perception.latency import BudgetMs
from perception.latency import now_ns
from perception.clock import ClockConfig, ClockServer, ClockSync
from perception.messages import HOST_ENV, Action, Decision, Heartbeat, NodeState, Reason, Stamp, WatchdogStatus
from perception.node import (
    EXIT_CONFIG, EXIT_OUTPUT, NETWORK_ENV, RUN_DIR_ENV, RUN_ID_ENV, private_run_dir, stop_order_path,
)
from perception.security import (
    LOCAL_KEY, CurveClient, CurveServer, Identity, SecurityError, check_key_name, is_network, load_identity,
    read_public_key,
    require_secure,
)
from perception.shm_ring import run_ring_prefix, segments_with_prefix, unlink_segment
from perception.topics import DECISIONS, HEARTBEAT, WATCHDOG_STATUS
from perception.transport import Publisher, Subscriber, resolve_endpoint

log = logging.getLogger("launch")

MAX_RESTART_DELAY_S = 5.0
# After a critical node failed for good: how long the launch keeps braking before it stops every
# node, and how often the launcher repeats a dead watchdog's brake (consumers reconnect to its
# endpoint within ZeroMQ's 100 ms reconnect interval).
FAILSAFE_HOLD_S = 0.5
FAILSAFE_REPEAT_S = 0.1
CLOCK_BIND_RETRY_S = 0.5  # while another program holds this host's clock port
# A node that heartbeated and ran this long since its start had recovered: its next failure starts a
# new series (the first restart delay again, max_restarts counted afresh), as systemd's start-limit
# interval and Kubernetes' back-off reset do.
STABLE_AFTER_S = 10.0
RUN_DIR_PREFIX = "perception-"
OWNER_FILE = "launcher.pid"  # "<pid> <process start time>" of the launcher that owns a run directory


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


@dataclass(frozen=True)
class LaunchFile:
    nodes: list[LaunchNode]
    status_period_s: Annotated[float, Range(0.1, 86_400)] = 5.0
    stop_timeout_s: Annotated[float, Range(0.1, 1.8)] = 1.5  # SIGTERM grace before SIGKILL; the whole stop stays under 2 s
    drain_s: Annotated[float, Range(0, 10)] = 0.0  # after a shutdown_on_exit node finishes cleanly: time for in-flight work downstream
    budget_ms: BudgetMs | None = None  # capture-to-decision budget: overrides every node config's `budget_ms`
    hosts: dict[str, HostSpec] = field(default_factory=dict)  # name -> address; nodes say `host: NAME`
    base_port: Port = 7100  # tcp port of the node at index 0 of `nodes`, when it publishes for other hosts
    keys: Path | None = None  # CURVE keys folder (perception keys DIR): tcp endpoints need it...
    insecure: bool = False  # ...unless this says plain tcp is fine (a network nobody else can reach)
    clock: ClockConfig = field(default_factory=ClockConfig)  # how hosts convert each other's stamps

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


@dataclass(frozen=True)
class Placement:
    """Where one node runs and publishes, as the launch file lays nodes out over hosts."""

    host: str
    bind: str  # the endpoint its publisher binds
    connect: str  # the endpoint its readers connect to (bind, with the host's address for "*")
    key: str | None = None  # the CURVE key its publisher proves (its host's); None: plain


def referenced_nodes(config: Any, names: set[str]) -> set[str]:
    """The node names a node's config mentions (frames_from, rules.monitored, wait_for_nodes, ...):
    the nodes it reads from. A string that merely equals a name costs a tcp endpoint, nothing more."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and value in names:
            found.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(dataclasses.asdict(config))
    return found


# Config keys that name the nodes a node reads from or waits for (a name, or a list of names; an
# endpoint URL is taken as it is).
READ_FROM_KEYS = ("frames_from", "detections_from", "decisions_from", "control_from", "lockstep_from", "wait_for_nodes",
                  "monitored")


def check_references(spec: "LaunchFile", typed: dict[str, Any], source: str) -> None:
    """Every node a config reads from or waits for is a node of the launch: a typo in the watchdog's
    frames_from would leave it watching nothing (one line, before anything starts)."""
    names = {n.name for n in spec.nodes}

    def walk(config: Any, prefix: str, node: str) -> None:
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.", node)
            elif f.name in READ_FROM_KEYS and value is not None:
                for ref in [value] if isinstance(value, str) else value:
                    if "://" not in ref and ref not in names:
                        raise ConfigError(f"{source}: nodes[{node}] {prefix}{f.name}: {ref!r} is no node of this launch "
                                          f"(its nodes: {', '.join(sorted(names))})")

    for name, config in typed.items():
        walk(config, "", name)


def _tcp(address: str, port: int) -> str:
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def place_nodes(spec: LaunchFile, typed: dict[str, Any], run_dir: Path, source: str) -> dict[str, Placement]:
    """Every node's Placement, from the launch file and the nodes' configs alone, so that each host's
    launcher computes the same layout. ConfigError (one line) for a node without a host in a launch
    with hosts, frames in shared memory read on another host, clashing ports, or plain tcp that the
    launch file does not call insecure."""
    missing = [n.name for n in spec.nodes if spec.hosts and n.host is None]
    if missing:
        raise ConfigError(f"{source}: nodes[{missing[0]}].host: required when the launch file has hosts "
                          f"({', '.join(spec.hosts)})")
    host_of = {n.name: n.host or LOCAL_KEY for n in spec.nodes}
    read_from: dict[str, list[str]] = {}  # node -> its readers on other hosts
    for reader in spec.nodes:
        for name in sorted(referenced_nodes(typed[reader.name], set(host_of))):
            if host_of[name] != host_of[reader.name]:
                read_from.setdefault(name, []).append(reader.name)
    placements = {}
    for index, node in enumerate(spec.nodes):
        settings = getattr(typed[node.name], "node", None)
        curve = spec.keys is not None or getattr(settings, "keys", None) is not None
        key = getattr(settings, "key", None) or host_of[node.name]
        if node.name in read_from:
            bind, connect = _remote_endpoints(spec, node, index, typed[node.name], read_from[node.name], host_of, source)
        else:
            bind = connect = resolve_endpoint(getattr(settings, "publish", None) or node.name, run_dir)
        try:
            require_secure(f"{source}: node {node.name}", bind, curve, spec.insecure or getattr(settings, "insecure", False))
        except SecurityError as exc:
            raise ConfigError(str(exc)) from None
        placements[node.name] = Placement(host_of[node.name], bind, connect, key if curve and is_network(bind) else None)
    _check_ports(placements, source)
    return placements


def _remote_endpoints(spec: LaunchFile, node: LaunchNode, index: int, typed: Any, readers: list[str],
                      host_of: dict[str, str], source: str) -> tuple[str, str]:
    """(bind, connect) of a node read from other hosts: tcp on its host's address."""
    where = f"{source}: nodes[{node.name}]"
    others = ", ".join(f"{r} on {host_of[r]}" for r in readers)
    if not spec.hosts:
        raise ConfigError(f"{where}: read by {others}, on another host, but the launch file has no hosts")
    if getattr(getattr(typed, "node", None), "publish", None):
        raise ConfigError(f"{where}: its config sets node.publish, but nodes read from other hosts get their "
                          f"endpoint from the launch file (give it port: instead)")
    if getattr(typed, "transport", None) == "shm":
        raise ConfigError(f"{where}: its frames are read by {others}, where its shared memory is not: "
                          f"set params: {{transport: inline}}")
    host = spec.hosts[host_of[node.name]]
    port = node.port if node.port is not None else spec.base_port + index
    return _tcp(host.bind or host.address, port), _tcp(host.address, port)


def _check_ports(placements: dict[str, Placement], source: str) -> None:
    """Two nodes must not publish at one address and port (hosts may share an address: a one-machine try)."""
    seen: dict[str, str] = {}
    for name, placement in placements.items():
        if is_network(placement.connect):
            if placement.connect in seen:
                raise ConfigError(f"{source}: nodes {seen[placement.connect]} and {name} both publish on {placement.connect}")
            seen[placement.connect] = name


def network_settings(spec: LaunchFile, placements: dict[str, Placement], name: str, keys: Path | None) -> dict:
    """What node `name` is told in PERCEPTION_NETWORK (perception.node.with_launch_network): where
    it publishes, its host's keys, where every node on the network publishes, and where the other
    hosts' clocks are served."""
    placement = placements[name]
    peers = {n: {"endpoint": p.connect, "key": p.key} for n, p in placements.items() if is_network(p.connect)}
    curve = keys is not None and any(p.key is not None for p in placements.values())  # else no node needs a key
    clocks = {host: {"endpoint": connect, "key": host if curve else None}
              for host, (_, connect) in clock_endpoints(spec).items() if host != placement.host}
    return {"publish": placement.bind, "keys": str(keys) if curve else None, "key": placement.host,
            "insecure": spec.insecure, "peers": peers, "clocks": clocks, "clock": dataclasses.asdict(spec.clock)}


def clock_endpoints(spec: LaunchFile) -> dict[str, tuple[str, str]]:
    """Host -> (bind, connect) of its launcher's clock server; none without hosts."""
    endpoints = {}
    for index, (name, host) in enumerate(spec.hosts.items()):
        port = host.clock_port or spec.base_port - 1 - index
        endpoints[name] = (_tcp(host.bind or host.address, port), _tcp(host.address, port))
    return endpoints


@dataclass
class ManagedNode:
    spec: LaunchNode
    config_path: Path  # the validated, resolved config written into the run directory
    endpoint: str  # where its readers connect
    bind: str  # where it publishes (the launcher publishes a dead watchdog's brakes there)
    process: subprocess.Popen | None = None
    state: str = "pending"  # pending, running, restarting, exited, failed
    restarts: int = 0  # in all
    in_a_row: int = 0  # restarts since it last ran stably (STABLE_AFTER_S): the delay doubles with them
    restart_at_ns: int = 0
    exit_code: int | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_ns: int = 0
    started_ns: int = 0
    hangs: int = 0  # times it was killed for a stale heartbeat
    killed_hung: bool = False
    network: dict = field(default_factory=dict)  # PERCEPTION_NETWORK for it (network_settings)
    key: str | None = None  # its publisher's CURVE key name, for the launcher's own subscriptions


def load_launch_file(path: Path) -> LaunchFile:
    data = load_yaml(path)
    return from_mapping(LaunchFile, data, source=str(path), base_dir=path.parent)


def node_module(spec: LaunchNode, source: str) -> types.ModuleType:
    """The node's module in nodes/: its CONFIG type, its main and, optionally, its `check(config)`."""
    try:
        module = importlib.import_module(f"nodes.{spec.node}")
    except ModuleNotFoundError:
        raise ConfigError(f"{source}: nodes[{spec.name}].node: no node module 'nodes.{spec.node}'") from None
    if not dataclasses.is_dataclass(getattr(module, "CONFIG", None)) or not callable(getattr(module, "main", None)):
        raise ConfigError(f"{source}: nodes[{spec.name}].node: 'nodes.{spec.node}' is not a node (no CONFIG and main)")
    return module


def budget_keys(config_type: type, prefix: str = "") -> list[str]:
    """Dotted paths of every `budget_ms` field in a config type and its nested sections."""
    keys = []
    for f in dataclasses.fields(config_type):
        nested = typing.get_type_hints(config_type).get(f.name)
        if f.name == "budget_ms":
            keys.append(prefix + f.name)
        elif dataclasses.is_dataclass(nested):
            keys += budget_keys(nested, f"{prefix}{f.name}.")
    return keys


def resolve_node_config(spec: LaunchNode, source: str, budget_ms: float | None = None) -> tuple[dict, Any]:
    """The node's config with the launch budget and params merged, validated as the node itself will
    (the same from_mapping, then the node's own `check`: class names, model files); returns (plain
    data, typed config)."""
    module = node_module(spec, source)
    config_type = module.CONFIG
    data = load_yaml(spec.config) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{spec.config}: top level must be a mapping")
    budgets = budget_keys(config_type)
    for key, value in spec.params.items():
        if budget_ms is not None and key in budgets:  # one budget for the whole launch: no node may loosen it
            raise ConfigError(f"{source}: nodes[{spec.name}].params: {key}: the launch file's budget_ms sets it for every node")
        set_key(data, key, value, f"{source}: nodes[{spec.name}].params")
    if budget_ms is not None:
        for key in budgets:
            set_key(data, key, budget_ms, f"{source}: budget_ms")
    where = f"{spec.config} (node {spec.name})"
    typed = from_mapping(config_type, data, source=where, base_dir=spec.config.parent)
    check_node_config(module, typed, where)
    return _absolutize(typed, data), typed


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


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the launcher dies (even SIGKILL), the node gets SIGTERM.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def apply_scheduling(nice: int = 0, realtime_priority: int | None = None) -> None:
    """Lower this process's priority by `nice` and/or put it in SCHED_FIFO; OSError when refused."""
    if nice:
        os.nice(nice)
    if realtime_priority is not None:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime_priority))


def _child_setup(spec: LaunchNode):
    """What runs in the child between fork and exec. Scheduling is set here, before the node starts
    any thread (ZeroMQ's I/O thread, ONNX Runtime's pool), so every thread inherits it."""

    def setup() -> None:
        _die_with_parent()
        try:
            apply_scheduling(spec.nice, spec.realtime_priority)
        except OSError as exc:
            # No logging between fork and exec; one line straight to the launcher's stderr.
            os.write(2, f"launch: {spec.name}: scheduling (nice {spec.nice}, realtime priority "
                        f"{spec.realtime_priority}) refused ({exc.strerror}): running at normal priority\n".encode())

    return setup


class Launcher:
    def __init__(self, spec: LaunchFile, source: str, status_file: Path | None = None, host: str | None = None,
                 keys: Path | None = None) -> None:
        """`source` names where the spec came from (the launch file) in error messages; `host`: start
        only that host's nodes (required when the launch file has hosts); `keys` replaces its keys folder."""
        self.launch_path = source
        self.spec = spec
        self.host = host
        self.keys = Path(keys).resolve() if keys is not None else spec.keys
        self.identity: Identity | None = None  # this host's key pair, for subscribing to its CURVE nodes
        self.run_id = secrets.token_hex(4)
        self.run_dir = Path(tempfile.gettempdir()) / f"{RUN_DIR_PREFIX}{self.run_id}"
        self.status_file = status_file
        self.nodes: list[ManagedNode] = []
        self._stop_reason: str | None = None
        self._drain_until_ns: int | None = None
        self._exit_code = 0
        self._critical_failure: str | None = None  # "NAME failed (...)" once a critical node failed for good
        self._context = zmq.Context()
        self.watchdog_status: WatchdogStatus | None = None  # the newest, for the topic column of the status
        self._clock_curve: CurveServer | None = None  # the ZAP handler of its clock server, when over CURVE
        self._clock_retry_ns: int | None = None  # when to try binding its clock server again (port taken)
        self._clock_port_taken = False  # said once
        self._validate_and_prepare()

    @classmethod
    def from_file(cls, path: Path, status_file: Path | None = None) -> "Launcher":
        return cls(load_launch_file(Path(path)), str(path), status_file)

    def _validate_and_prepare(self) -> None:
        # Every node's config, this host's or not: who reads whom decides the layout (place_nodes).
        resolved = [(spec, *resolve_node_config(spec, str(self.launch_path), self.spec.budget_ms)) for spec in self.spec.nodes]
        check_references(self.spec, {s.name: typed for s, _, typed in resolved}, str(self.launch_path))
        self._check_host()
        spec_with_keys = dataclasses.replace(self.spec, keys=self.keys)
        placements = place_nodes(spec_with_keys, {s.name: typed for s, _, typed in resolved}, self.run_dir,
                                 str(self.launch_path))
        mine = [(s, d, t) for s, d, t in resolved if self.host is None or s.host == self.host]
        # Read back as the node will: from the run directory (a relative path left in would now mean another file).
        texts = {s.name: node_config_text(d, t, self.run_dir, f"{s.config} (node {s.name})") for s, d, t in mine}
        self._load_keys(placements, [s.name for s, _, _ in mine])
        remove_stale_run_dirs(self.run_dir.parent)
        self.run_dir.mkdir(mode=0o700)
        private_run_dir(self.run_dir)
        (self.run_dir / OWNER_FILE).write_text(f"{os.getpid()} {process_start_time(os.getpid())}")
        for spec, data, typed in mine:
            config_path = self.run_dir / f"{spec.name}.yaml"
            config_path.write_text(texts[spec.name])
            placement = placements[spec.name]
            self.nodes.append(ManagedNode(spec, config_path, placement.connect, placement.bind, key=placement.key,
                                          network=network_settings(spec_with_keys, placements, spec.name, self.keys)))

    def _check_host(self) -> None:
        source, hosts = self.launch_path, self.spec.hosts
        if hosts and self.host is None:
            raise ConfigError(f"{source}: splits its nodes over hosts {', '.join(hosts)}: start each part with --host NAME")
        if self.host is not None and self.host not in hosts:
            raise ConfigError(f"{source}: no host {self.host!r} " + (f"(hosts: {', '.join(hosts)})" if hosts else
                                                                     "(the launch file has no hosts)"))
        if self.host is not None and not any(n.host == self.host for n in self.spec.nodes):
            raise ConfigError(f"{source}: no node runs on host {self.host!r}")

    def _load_keys(self, placements: dict[str, Placement], mine: list[str]) -> None:
        """Check, before anything starts, every key this host's nodes will need: its own key pair,
        and the public key of every host they read from over CURVE."""
        keyed = {p.key for p in placements.values() if p.key is not None}
        if self.keys is None and any(placements[n].key is not None for n in mine):
            raise ConfigError(f"{self.launch_path}: {', '.join(n for n in mine if placements[n].key)} publish with "
                              f"CURVE (their node.keys): give the launch file keys: (or --keys) so the launcher can read them")
        if self.keys is None or not keyed:
            return
        try:
            self.identity = load_identity(self.keys, self.host or LOCAL_KEY)
            for key in sorted(keyed):
                read_public_key(self.keys, key)
        except SecurityError as exc:
            raise ConfigError(f"{self.launch_path}: {exc}") from None
        log.info("CURVE on tcp with keys %s (this host's: %r)", self.keys, self.identity.name)

    def _curve(self) -> CurveClient | None:
        """CURVE for the launcher's own subscriptions to its nodes (heartbeats, watchdog status)."""
        if self.identity is None:
            return None
        keys = {m.endpoint: self.identity.server_key(m.key) for m in self.nodes if m.key is not None}
        return CurveClient(self.identity, keys) if keys else None

    def _serve_clock(self) -> ClockServer | None:
        """This host's clock, for the other hosts' nodes to convert its stamps (perception.clock);
        over CURVE when the launch has keys, so only its hosts can ask and trust the answer. None
        while another program holds its port: the run loop tries again (`_clock_retry_ns`), as a
        node that cannot bind is restarted, and the other hosts' clients connect once it is up."""
        self._clock_retry_ns = None
        if not self.spec.hosts or self.host is None or len(self.spec.hosts) < 2:
            return None
        bind, _ = clock_endpoints(self.spec)[self.host]
        if self.identity is not None and self._clock_curve is None:
            self._clock_curve = CurveServer(self._context, self.identity)
        try:
            server = ClockServer(self._context, bind, self._clock_curve)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise ConfigError(f"{self.launch_path}: host {self.host}: cannot serve its clock at {bind}: {exc}") from None
            if not self._clock_port_taken:
                log.error("host %s: cannot serve its clock at %s (%s): trying again every %.1f s; until then the "
                          "other hosts drop its nodes' messages as unsynced", self.host, bind, exc, CLOCK_BIND_RETRY_S)
            self._clock_port_taken = True
            self._clock_retry_ns = now_ns() + int(CLOCK_BIND_RETRY_S * 1e9)
            return None
        log.info("clock of host %s served at %s (%s)", self.host, bind, self.spec.clock.mode)
        return server

    # -- processes ------------------------------------------------------------------------
    def _start(self, managed: ManagedNode) -> None:
        env = dict(os.environ, **{RUN_DIR_ENV: str(self.run_dir), RUN_ID_ENV: self.run_id, "PYTHONUNBUFFERED": "1",
                                  NETWORK_ENV: json.dumps(managed.network)})
        if managed.spec.host is not None:  # the host whose clock its stamps are in (perception.messages.THIS_HOST)
            env[HOST_ENV] = managed.spec.host
        command = [sys.executable, "-m", f"nodes.{managed.spec.node}", "--name", managed.spec.name,
                   "--config", str(managed.config_path)]
        stop_order_path(self.run_dir, managed.spec.name).unlink(missing_ok=True)
        managed.process = subprocess.Popen(command, env=env, preexec_fn=_child_setup(managed.spec), stdin=subprocess.DEVNULL)
        managed.state = "running"
        managed.started_ns = now_ns()
        managed.killed_hung = False
        managed.heartbeat = None
        log.info("started %s (pid %d)%s", managed.spec.name, managed.process.pid,
                 f", restart {managed.restarts}" if managed.restarts else "")

    def _on_exit(self, managed: ManagedNode, code: int) -> None:
        spec = managed.spec
        managed.exit_code = code
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if managed.killed_hung:
            how = "a kill for a stale heartbeat"
            code = code or 1  # a hang is a failure whatever the exit code says
        self._sweep_shared_memory(f"{run_ring_prefix(self.run_id)}{spec.name}-{managed.process.pid}")
        if managed.heartbeat is not None and now_ns() - managed.started_ns >= STABLE_AFTER_S * 1e9:
            managed.in_a_row = 0
        wants_restart = spec.restart == "always" or (spec.restart == "on-failure" and code != 0)
        if code in (EXIT_CONFIG, EXIT_OUTPUT):
            log.error("%s exited with %s: %s, not restarting", spec.name, how,
                      "bad config or input" if code == EXIT_CONFIG else "cannot write its output")
            managed.state = "failed"
        elif not wants_restart:
            managed.state = "exited" if code == 0 else "failed"
            log.log(logging.INFO if code == 0 else logging.ERROR, "%s exited with %s", spec.name, how)
        elif managed.in_a_row >= spec.max_restarts:
            managed.state = "failed"
            log.error("%s exited with %s and has used its %d restarts in a row", spec.name, how, spec.max_restarts)
        else:
            delay = min(spec.restart_delay_s * (2 ** managed.in_a_row), MAX_RESTART_DELAY_S)
            managed.restarts += 1
            managed.in_a_row += 1
            managed.state = "restarting"
            managed.restart_at_ns = now_ns() + int(delay * 1e9)
            log.warning("%s exited with %s; restarting in %.1f s (%d/%d in a row)", spec.name, how, delay,
                        managed.in_a_row, spec.max_restarts)
        if managed.state == "failed":
            self._exit_code = 1
            if (spec.critical or spec.node == "watchdog") and self._critical_failure is None:
                self._critical_failure = f"{spec.name} failed ({how})"
                self._stop_reason = f"critical node {self._critical_failure}: braking and stopping the pipeline"
                log.error("%s", self._stop_reason)
                return
        if spec.shutdown_on_exit and managed.state == "exited" and self.spec.drain_s > 0:
            log.info("%s finished; ending the launch after %.1f s for in-flight work", spec.name, self.spec.drain_s)
            self._drain_until_ns = now_ns() + int(self.spec.drain_s * 1e9)
        elif spec.shutdown_on_exit and managed.state in ("exited", "failed"):
            self._stop_reason = f"{spec.name} {'finished' if managed.state == 'exited' else 'failed'}"
            log.info("%s; ending the launch", self._stop_reason)

    def _supervise(self) -> None:
        for managed in self.nodes:
            if managed.state == "running":
                code = managed.process.poll()
                if code is not None:
                    self._on_exit(managed, code)
                elif not managed.killed_hung:
                    self._kill_if_hung(managed)
            if managed.state == "restarting" and now_ns() >= managed.restart_at_ns:
                self._start(managed)
        if self._stop_reason is None and all(m.state in ("exited", "failed") for m in self.nodes):
            self._stop_reason = "all nodes have ended"

    def _kill_if_hung(self, managed: ManagedNode) -> None:
        """SIGKILL a node whose heartbeat is stale (SIGKILL: a stopped or stuck process cannot run a
        SIGTERM handler); its exit then takes the usual restart path."""
        spec, now = managed.spec, now_ns()
        if managed.heartbeat is None:
            silent_s, limit_s, what = (now - managed.started_ns) / 1e9, spec.startup_timeout_s, "no first heartbeat"
        elif spec.hang_timeout_s is not None:
            silent_s, limit_s, what = (now - managed.heartbeat_ns) / 1e9, spec.hang_timeout_s, "heartbeat stale"
        else:
            return
        if silent_s > limit_s:
            log.error("%s is hung (%s for %.1f s, limit %.1f s): killing it", spec.name, what, silent_s, limit_s)
            managed.killed_hung = True
            managed.hangs += 1
            managed.process.kill()

    # -- status ---------------------------------------------------------------------------
    def _collect_heartbeats(self, subscriber: Subscriber, timeout_s: float) -> None:
        if subscriber.socket.poll(int(timeout_s * 1000)):
            for received in subscriber.receive():
                beat: Heartbeat = received.message
                for managed in self.nodes:
                    # Only the process this launcher started counts: not a previous instance's
                    # last words, nor a heartbeat that merely borrows the name.
                    if managed.spec.name == beat.node and managed.process is not None and managed.process.pid == beat.pid:
                        managed.heartbeat, managed.heartbeat_ns = beat, now_ns()

    def _collect_watchdog_status(self, subscriber: Subscriber) -> None:
        for received in subscriber.receive():
            self.watchdog_status = received.message

    def topic_status(self) -> list[dict]:
        """The watchdog's view of every monitored topic: state and measured rate."""
        if self.watchdog_status is None:
            return []
        return [{"topic": t.topic, "state": t.state.name, "rate_hz": t.rate_hz} for t in self.watchdog_status.topics]

    def status(self) -> list[dict]:
        rows = []
        now = now_ns()
        for m in self.nodes:
            beat = m.heartbeat
            rows.append({
                "name": m.spec.name, "pid": m.process.pid if m.process else None, "state": m.state,
                "node_state": NodeState(beat.state).name.lower() if beat else None,
                "restarts": m.restarts, "hangs": m.hangs, "exit_code": m.exit_code,
                "heartbeat_age_ms": round((now - m.heartbeat_ns) / 1e6, 1) if beat else None,
                "last_frame": beat.frame_id if beat else None,
                "counters": dict(beat.counters) if beat else {},
            })
        return rows

    def _print_status(self) -> None:
        lines = [f"{'node':<12} {'pid':>7} {'state':<10} {'restarts':>8} {'hb age':>8} {'frame':>7}  counters"]
        for row in self.status():
            counters = " ".join(f"{k}={v}" for k, v in row["counters"].items() if v)
            age = f"{row['heartbeat_age_ms']:.0f}ms" if row["heartbeat_age_ms"] is not None else "-"
            lines.append(f"{row['name']:<12} {row['pid'] or '-':>7} {row['state']:<10} {row['restarts']:>8} "
                         f"{age:>8} {row['last_frame'] if row['last_frame'] is not None else '-':>7}  {counters}")
        topics = self.topic_status()
        if topics:
            lines.append("topics: " + "  ".join(f"{t['topic']} {t['state']} {t['rate_hz']:g} Hz" for t in topics))
        print("\n".join(lines), file=sys.stderr, flush=True)

    def _write_status_file(self) -> None:
        if self.status_file is None:
            return
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": self.run_id, "run_dir": str(self.run_dir), "nodes": self.status(),
                                   "topics": self.topic_status()}))
        tmp.replace(self.status_file)

    # -- run and stop ---------------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        curve = self._curve()
        heartbeats = Subscriber(self._context, [m.endpoint for m in self.nodes], HEARTBEAT, latest=False, curve=curve)
        watchdogs = [m.endpoint for m in self.nodes if m.spec.node == "watchdog"]
        status = Subscriber(self._context, watchdogs, WATCHDOG_STATUS, latest=True, curve=curve) if watchdogs else None
        # Its nodes stamp with its host's clock, which is this process's: their messages need no conversion.
        own_clock = ClockSync(self._context, {}, host=self.host)
        heartbeats.clocks = own_clock
        if status is not None:
            status.clocks = own_clock
        end_ns = now_ns() + int(duration_s * 1e9) if duration_s else None
        next_status_ns = 0
        clock_server = None
        try:
            clock_server = self._serve_clock()
            for managed in self.nodes:
                self._start(managed)
            while self._stop_reason is None:
                self._collect_heartbeats(heartbeats, 0.05)
                heartbeats.reconnect_dropped()  # its nodes' tcp ports may have been squatted at start
                if status is not None:
                    self._collect_watchdog_status(status)
                    status.reconnect_dropped()
                if self._clock_retry_ns is not None and now_ns() >= self._clock_retry_ns:
                    clock_server = self._serve_clock()
                self._supervise()
                self._write_status_file()
                if now_ns() >= next_status_ns:
                    next_status_ns = now_ns() + int(self.spec.status_period_s * 1e9)
                    self._print_status()
                if end_ns is not None and now_ns() >= end_ns:
                    self._stop_reason = f"duration of {duration_s:g} s reached"
                if self._drain_until_ns is not None and now_ns() >= self._drain_until_ns:
                    self._stop_reason = "source finished and in-flight work drained"
        finally:
            log.info("stopping: %s", self._stop_reason or "error")
            if self._critical_failure is not None:
                self._hold_fail_safe(heartbeats)
            self.stop()
            heartbeats.close()
            if status is not None:
                status.close()
            if clock_server is not None:
                clock_server.close()
            if self._clock_curve is not None:
                self._clock_curve.stop()
            self._context.term()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._exit_code

    def _hold_fail_safe(self, heartbeats: Subscriber) -> None:
        """Brake for FAILSAFE_HOLD_S before stopping a launch whose critical node failed for good. A
        watchdog still running brakes by itself (the failed node's last heartbeats said FAILED: node
        down); a failed watchdog has left its endpoint free, and the launcher publishes a fail-safe
        BRAKE there in its place, to the consumers connected to it."""
        publishers: list[tuple[Publisher, CurveServer | None]] = []
        for managed in self.nodes:
            if managed.spec.node == "watchdog" and managed.state == "failed":
                curve = CurveServer(self._context, self.identity) if managed.key and self.identity else None
                try:
                    publishers.append((Publisher(self._context, managed.bind, curve=curve), curve))
                except RuntimeError as exc:
                    log.error("cannot publish the fail-safe in place of %s: %s", managed.spec.name, exc)
                    if curve is not None:
                        curve.stop()
        deadline = time.monotonic() + FAILSAFE_HOLD_S
        next_brake = 0.0
        while (now := time.monotonic()) < deadline:
            if publishers and now >= next_brake:
                next_brake = now + FAILSAFE_REPEAT_S
                brake = self._fail_safe_decision()
                for publisher, _ in publishers:
                    publisher.publish(DECISIONS, brake)
            self._collect_heartbeats(heartbeats, max(0.0, min(next_brake, deadline) - time.monotonic()))
        for publisher, curve in publishers:
            publisher.close(linger_ms=100)
            if curve is not None:
                curve.stop()
        if publishers:
            log.warning("fail-safe BRAKE published in place of the failed watchdog for %.1f s", FAILSAFE_HOLD_S)

    def _fail_safe_decision(self) -> Decision:
        """A BRAKE from the launcher about the newest frame any of its nodes reported (none: frame 0, now)."""
        now = now_ns()
        beats = [m.heartbeat for m in self.nodes if m.heartbeat is not None and 0 < m.heartbeat.capture_ns <= now]
        newest = max(beats, key=lambda beat: beat.frame_id, default=None)
        frame_id, capture_ns = (newest.frame_id, newest.capture_ns) if newest else (0, now)
        return Decision(frame_id=frame_id, capture_ns=capture_ns, stamps=(Stamp("launcher", now),),
                        action=Action.BRAKE, reason=Reason.NODE_DOWN, decided_by="launcher",
                        detail=f"critical node {self._critical_failure}: pipeline stopping")

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.request_stop(f"received {signal.Signals(signum).name}")

    def request_stop(self, reason: str) -> None:
        """End run() as SIGTERM would (from another thread too: a harness running the launch)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    @property
    def stop_reason(self) -> str | None:
        """Why run() is ending (None while it runs): from then on nodes leave on purpose."""
        return self._stop_reason

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL what is left at the deadline, then remove the run's resources."""
        started = time.monotonic()
        live = [m for m in self.nodes if m.process and m.process.poll() is None]
        for managed in live:
            stop_order_path(self.run_dir, managed.spec.name).touch()
            managed.process.send_signal(signal.SIGTERM)
        deadline = started + self.spec.stop_timeout_s
        for managed in live:
            try:
                managed.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.1f s; killing it", managed.spec.name, self.spec.stop_timeout_s)
                managed.process.kill()
                managed.process.wait()
        for managed in self.nodes:
            if managed.state in ("running", "restarting"):
                managed.state = "exited"
        self._sweep_shared_memory(run_ring_prefix(self.run_id))
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._write_status_file()
        log.info("all nodes stopped in %.2f s", time.monotonic() - started)

    @staticmethod
    def _sweep_shared_memory(prefix: str) -> None:
        for name in segments_with_prefix(prefix):
            if unlink_segment(name):
                log.info("removed shared memory %s left by a stopped node", name)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), which tells a live owner from
    an unrelated process that got its pid later; None when no such process exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def remove_stale_run_dirs(parent: Path) -> list[Path]:
    """Remove this user's run directories whose launcher is gone, and the shared memory of their
    run; returns what was removed. A directory without an owner file is left alone: it is not
    known to be ours."""
    removed = []
    for run_dir in sorted(Path(parent).glob(f"{RUN_DIR_PREFIX}*")):
        try:
            if run_dir.stat().st_uid != os.geteuid():
                continue
            pid, started = (run_dir / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            continue
        if process_start_time(int(pid)) == started:
            continue  # its launcher still runs
        run_id = run_dir.name[len(RUN_DIR_PREFIX):]
        for name in segments_with_prefix(run_ring_prefix(run_id)):
            unlink_segment(name)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("removed %s, left by launcher %s which is gone", run_dir, pid)
        removed.append(run_dir)
    return removed


def launch_main(path: Path, duration_s: float | None, status_file: Path | None,
                foxglove_port: int | None = None, host: str | None = None, keys: Path | None = None) -> int:
    """`perception launch`; `foxglove_port`: also run the live view (nodes/viewer.py) on that port;
    `host`: only that host's part of a launch file with hosts; `keys`: its keys folder on this machine."""
    try:
        spec = load_launch_file(Path(path))
        if foxglove_port is not None:
            from perception.visualization import with_viewer

            spec = with_viewer(spec, foxglove_port, str(path))  # ConfigError too, if its port is taken
            if host in spec.hosts:  # the live view runs where it was asked for
                spec = dataclasses.replace(spec, nodes=[*spec.nodes[:-1], dataclasses.replace(spec.nodes[-1], host=host)])
        launcher = Launcher(spec, str(path), status_file, host=host, keys=keys)
        return launcher.run(duration_s)  # ConfigError too: its host's clock address may not be this host's
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
