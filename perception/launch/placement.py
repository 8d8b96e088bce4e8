"""Where each node of a launch runs and publishes, computed from the launch file alone so that every
host's launcher lays the nodes out the same way with nothing exchanged at start: a node read by a
node on another host publishes on tcp (CURVE with keys), every other node on ipc in its run
directory; each host's launcher serves its clock for the others (perception.clock)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perception.config import ConfigError
from perception.graph import Graph
from perception.launch.spec import LaunchFile, LaunchNode
from perception.security import LOCAL_KEY, SecurityError, is_network, require_secure
from perception.transport import resolve_endpoint


@dataclass(frozen=True)
class Placement:
    """Where one node runs and publishes, as the launch file lays nodes out over hosts."""

    host: str
    bind: str  # the endpoint its publisher binds
    connect: str  # the endpoint its readers connect to (bind, with the host's address for "*")
    key: str | None = None  # the CURVE key its publisher proves (its host's); None: plain


def _tcp(address: str, port: int) -> str:
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def place_nodes(spec: LaunchFile, graph: Graph, typed: dict[str, Any], run_dir: Path, source: str) -> dict[str, Placement]:
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
        for name in sorted(graph.read_from(reader.name) & set(host_of)):
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
