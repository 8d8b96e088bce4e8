"""The launcher's supervision: validate the whole launch before anything starts, start this host's
nodes, and run one short loop that restarts crashed and hung nodes, keeps the status, serves this
host's clock, and on a critical node's failure brakes and stops them all (perception.launch)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import zmq

from perception.clock import ClockServer, ClockSync
from perception.config import ConfigError
from perception.latency import now_ns
from perception.launch.failsafe import hold_fail_safe
from perception.launch.placement import Placement, clock_endpoints, network_settings, place_nodes
from perception.launch.process import ManagedNode
from perception.launch.spec import LaunchFile, build_graph, load_launch_file, node_config_text, resolve_launch
from perception.launch.status import node_rows, print_status, topic_rows, write_status_file
from perception.messages import Heartbeat, WatchdogStatus
from perception.rundir import RUN_DIR_PREFIX, create_run_dir, remove_run_dir, stop_order_path, sweep_shared_memory
from perception.security import LOCAL_KEY, CurveClient, CurveServer, Identity, SecurityError, load_identity, read_public_key
from perception.shm_ring import run_ring_prefix
from perception.topics import HEARTBEAT, WATCHDOG_STATUS
from perception.transport import Subscriber

log = logging.getLogger("launch")

CLOCK_BIND_RETRY_S = 0.5  # while another program holds this host's clock port


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
        self.graph = build_graph(self.spec, str(self.launch_path))
        resolved = resolve_launch(self.spec, str(self.launch_path), self.graph)
        self._check_host()
        spec_with_keys = dataclasses.replace(self.spec, keys=self.keys)
        placements = place_nodes(spec_with_keys, self.graph, {s.name: typed for s, _, typed in resolved}, self.run_dir,
                                 str(self.launch_path))
        mine = [(s, d, t) for s, d, t in resolved if self.host is None or s.host == self.host]
        # Read back as the node will: from the run directory (a relative path left in would now mean another file).
        texts = {s.name: node_config_text(d, t, self.run_dir, f"{s.config} (node {s.name})") for s, d, t in mine}
        self._load_keys(placements, [s.name for s, _, _ in mine])
        create_run_dir(self.run_dir)
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
        managed.start(self.run_dir, self.run_id)

    def _on_exit(self, managed: ManagedNode, code: int) -> None:
        spec = managed.spec
        sweep_shared_memory(f"{run_ring_prefix(self.run_id)}{spec.name}-{managed.process.pid}")
        how = managed.exited(code)
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
                    managed.kill_if_hung()
            if managed.state == "restarting" and now_ns() >= managed.restart_at_ns:
                self._start(managed)
        if self._stop_reason is None and all(m.state in ("exited", "failed") for m in self.nodes):
            self._stop_reason = "all nodes have ended"

    # -- status ---------------------------------------------------------------------------
    def _collect_heartbeats(self, subscriber: Subscriber, timeout_s: float) -> None:
        if subscriber.socket.poll(int(timeout_s * 1000)):
            for received in subscriber.receive():
                beat: Heartbeat = received.message
                for managed in self.nodes:
                    # Only the process this launcher started counts: not a previous instance's
                    # last words, nor a heartbeat that merely borrows the name.
                    if managed.spec.name == beat.node and managed.process is not None and managed.process.pid == beat.pid:
                        managed.heard(beat)

    def _collect_watchdog_status(self, subscriber: Subscriber) -> None:
        for received in subscriber.receive():
            self.watchdog_status = received.message

    def _print_status(self) -> None:
        print_status(node_rows(self.nodes), topic_rows(self.watchdog_status))

    def _write_status_file(self) -> None:
        if self.status_file is not None:
            write_status_file(self.status_file, self.run_id, self.run_dir, node_rows(self.nodes),
                              topic_rows(self.watchdog_status))

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
        hold_fail_safe(self._context, self.identity, self.nodes, self._critical_failure,
                       lambda timeout_s: self._collect_heartbeats(heartbeats, timeout_s))

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
        remove_run_dir(self.run_dir, self.run_id)
        self._write_status_file()
        log.info("all nodes stopped in %.2f s", time.monotonic() - started)
