"""Where a node, or anything listening to one (the launcher, the latency collector, a benchmark),
finds the publishers it reads and the CURVE it needs to trust them: one place for endpoints and keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from perception.security import CurveClient, Identity, SecurityError, is_network
from perception.transport import resolve_endpoint


@dataclass(frozen=True)
class Peer:
    """Where another node publishes when it is not at its ipc path in this run directory."""

    endpoint: str  # e.g. tcp://10.0.0.2:7100
    key: str | None = None  # CURVE key name of its host (keys/public/<key>.key); None: a plain endpoint


@dataclass(frozen=True)
class Connector:
    """Resolves node names to endpoints (`peers` for nodes elsewhere, the run directory's ipc paths
    for the rest) and makes the CURVE client for them; `owner` names who connects in errors."""

    owner: str
    run_dir: Path
    peers: Mapping[str, Peer] = field(default_factory=dict)
    identity: Identity | None = None  # this host's key pair (a keys folder), for CURVE publishers
    insecure: bool = False  # plain tcp accepted

    def connect(self, nodes: Sequence[str]) -> tuple[list[str], CurveClient | None]:
        """The endpoints of the nodes (names or endpoint URLs) and the CURVE client for them."""
        resolved = [self.resolve(node) for node in nodes]
        return [endpoint for endpoint, _ in resolved], self.curve_client(resolved)

    def resolve(self, ref: str) -> tuple[str, str | None]:
        """A node name or endpoint URL -> (endpoint, CURVE key name of its host or None). A name in
        `node.peers` (the launcher fills them in for nodes on other hosts) goes where it says; any
        other name to its ipc path in the run directory."""
        peer = self.peers.get(ref)
        if peer is not None:
            return resolve_endpoint(peer.endpoint, self.run_dir), peer.key
        endpoint = resolve_endpoint(ref, self.run_dir)
        keys = {resolve_endpoint(p.endpoint, self.run_dir): p.key for p in self.peers.values()}
        return endpoint, keys.get(endpoint)

    def curve_client(self, endpoints: Sequence[tuple[str, str | None]]) -> CurveClient | None:
        """CURVE for connecting to (endpoint, key name) pairs; refuses a network endpoint without a
        key unless `insecure`, and a keyed one when this node has no keys folder."""
        server_keys: dict[str, bytes] = {}
        for endpoint, key in endpoints:
            if key is None and is_network(endpoint) and not self.insecure:
                raise SecurityError(f"{self.owner}: {endpoint} without its publisher's CURVE key: name that "
                                    f"node in node.peers with its key, or set insecure: true")
            if key is not None:
                if self.identity is None:
                    raise SecurityError(f"{self.owner}: {endpoint} is a CURVE publisher (key {key!r}) but this "
                                        f"node has no keys folder (node.keys)")
                server_keys[endpoint] = self.identity.server_key(key)
        return CurveClient(self.identity, server_keys) if server_keys else None
