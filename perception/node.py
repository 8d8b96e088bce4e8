"""The mechanics every node shares, written once: config and CLI, sockets, heartbeats, signals,
counters and clean shutdown. A node file in nodes/ only says what the node does."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Mapping, Sequence, TypeVar

import zmq

from perception.clock import ClockConfig, ClockSync
from perception.config import ConfigError, Range, check_ranges, from_mapping, load_config
from perception.graph import parse_inputs
from perception.interface import NodeBase
from perception.latency import BudgetMs, now_ns
from perception.messages import FrameTransport, Heartbeat, Message, NodeState
from perception.rundir import RunDirError, claim_name, private_run_dir, stop_order_path
from perception.connector import Connector, Peer
from perception.security import (
    LOCAL_KEY, CurveServer, Identity, SecurityError, is_network, load_identity, require_secure,
)
from perception.shm_ring import run_ring_prefix
from perception.topics import HEARTBEAT, Topic
from perception.transport import FrameReceiver, FrameSender, Publisher, Subscriber, resolve_endpoint

log = logging.getLogger("perception.node")

C = TypeVar("C")

EXIT_CONFIG = 78  # EX_CONFIG: bad configuration or input; restarting cannot help
EXIT_OUTPUT = 74  # EX_IOERR: an output that cannot be written (a full disk); restarting cannot help either
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: an input device or stream that did not open; retried unless it never has
EXIT_SIGNALLED = 143  # 128 + SIGTERM: stopped by a signal nobody ordered through the launcher
RUN_DIR_ENV = "PERCEPTION_RUN_DIR"
RUN_ID_ENV = "PERCEPTION_RUN_ID"
FAREWELL_WAIT_NS = 300_000_000  # a failing node repeats its last heartbeat this long, and lets it go out
FAREWELL_REPEAT_S = 0.05
# JSON of `node:` settings the launcher gives a node (publish, keys, key, insecure, peers); what the
# node's own config sets wins (with_launch_network).
NETWORK_ENV = "PERCEPTION_NETWORK"


class FatalInputError(RuntimeError):
    """Input the node cannot start with (a missing or corrupt file): exits with EXIT_CONFIG, which
    the launcher never restarts."""


class OutputError(RuntimeError):
    """An output the node cannot write (a full disk, a read-only folder): exits with EXIT_OUTPUT,
    which the launcher never restarts; a restart would only fail the same way, leaving another file."""


class DeviceLostError(RuntimeError):
    """A device that may come back (a camera unplugged or busy): exits with 1, so the launcher's
    restart policy retries it while the watchdog holds the vehicle in fail-safe."""


class InputUnavailableError(DeviceLostError):
    """A device or stream that did not open: exits with EXIT_UNAVAILABLE. The launcher retries it
    like a lost one, but one that has never opened in this launch within its start-up time is a
    wrong device or URL, not a glitch: the launcher gives up on it (perception.launch.process)."""


@dataclass(frozen=True)
class NodeSettings:
    """The `node:` section of every node config."""

    heartbeat_period_ms: Annotated[int, Range(1, 10_000)] = 100
    publish: str | None = None  # endpoint URL override; default ipc://{run_dir}/{name}.pub
    log_level: str = "info"
    # CURVE (perception.security): a tcp:// publisher or subscription needs a keys folder holding this
    # host's key pair `key` (default "local"), unless `insecure` accepts plain tcp on a trusted network.
    keys: Path | None = None
    key: str | None = None
    insecure: bool = False
    # The capture-to-decision budget of every frame: the launch file's `budget_ms`, the same for every node.
    budget_ms: BudgetMs = 100.0
    # Its edges, from the launch file (perception.graph): input name -> the `node/output`s it reads.
    inputs: dict[str, list[str]] = field(default_factory=dict)
    # Who acts on its outputs, from the launch file: output name -> node names, recorders and live
    # views left out (the watchdog's depth ceiling goes to the reader of its `control`).
    readers: dict[str, list[str]] = field(default_factory=dict)
    # The class names of the detector whose detections it reads, from the launch file and that
    # detector's model (the ids in Detections are indices into them); empty without one.
    class_names: list[str] = field(default_factory=list)
    # Node name -> where it publishes, when not at its ipc path in the run directory (another host).
    peers: dict[str, Peer] = field(default_factory=dict)
    # Host name -> its clock server, for the other hosts of a split launch (perception.clock), and how
    # their stamps are converted into this host's clock.
    clocks: dict[str, Peer] = field(default_factory=dict)
    clock: ClockConfig = field(default_factory=ClockConfig)

    def __post_init__(self) -> None:
        check_ranges(self)
        object.__setattr__(self, "edges", parse_inputs(self.inputs))  # ValueError naming a malformed edge
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")


def with_launch_network(settings: NodeSettings, environ: Mapping[str, str] = os.environ) -> NodeSettings:
    """`settings` completed by what the launcher passed in PERCEPTION_NETWORK; the node's own
    config wins where it says something (and `insecure` from either side holds)."""
    raw = environ.get(NETWORK_ENV)
    if not raw:
        return settings
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{NETWORK_ENV}: not JSON ({exc})") from None
    launched = from_mapping(NodeSettings, data, source=NETWORK_ENV)
    return dataclasses.replace(
        settings, publish=settings.publish or launched.publish, keys=settings.keys or launched.keys,
        key=settings.key or launched.key, insecure=settings.insecure or launched.insecure,
        peers={**launched.peers, **settings.peers}, clocks={**launched.clocks, **settings.clocks},
        clock=launched.clock if settings.clock == ClockConfig() else settings.clock,
    )


@dataclass(frozen=True)
class RunContext:
    """Where one launch keeps its sockets; shared-memory names are prefixed with run_id."""

    run_dir: Path
    run_id: str

    @classmethod
    def from_env(cls, run_dir: str | None = None) -> "RunContext":
        directory = Path(run_dir or os.environ.get(RUN_DIR_ENV) or "/tmp/perception")
        return cls(directory, os.environ.get(RUN_ID_ENV) or "manual")


@dataclass
class Node(NodeBase):
    name: str
    settings: NodeSettings
    run: RunContext
    context: zmq.Context = field(default_factory=zmq.Context)
    counters: dict[str, int] = field(default_factory=dict)
    state: NodeState = NodeState.STARTING

    def __post_init__(self) -> None:
        private_run_dir(self.run.run_dir)
        self._name_lock = claim_name(self.run.run_dir, self.name)
        self.endpoint = resolve_endpoint(self.settings.publish or self.name, self.run.run_dir)
        self._curve_server: CurveServer | None = None
        try:
            # This host's CURVE key pair; loaded up front so a missing or exposed key is one line at start.
            self.identity: Identity | None = (load_identity(self.settings.keys, self.settings.key or LOCAL_KEY)
                                              if self.settings.keys is not None else None)
            self.connector = Connector(f"node {self.name}", self.run.run_dir, self.settings.peers, self.identity,
                                       self.settings.insecure)
            self._curve_server = self._serve_curve()
            self.publisher = Publisher(self.context, self.endpoint, curve=self._curve_server)
        except (RuntimeError, SecurityError):
            self._stop_curve_server()
            os.close(self._name_lock)
            raise
        try:
            # The other hosts' clocks, when the launch has hosts: their messages are converted on receipt.
            servers = {host: self.connector.resolve(peer.endpoint)[0] for host, peer in self.settings.clocks.items()}
            self.clocks = ClockSync(self.context, servers, self.settings.clock, curve=self.connector.curve_client(
                [(servers[host], peer.key) for host, peer in self.settings.clocks.items()]))
        except ValueError:  # a clock endpoint without its key (SecurityError), a bad host name
            self.publisher.close()
            self._stop_curve_server()
            os.close(self._name_lock)
            raise
        self._subscribers: list[Subscriber] = []
        self._poller = zmq.Poller()
        self._closers: list[Callable[[], None]] = []
        self._stop_requested = False
        self.signalled = False
        self._heartbeat_seq = 0
        self._next_heartbeat_ns = 0
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    # -- lifecycle ------------------------------------------------------------------------
    def _request_stop(self, signum: int, _frame: object) -> None:
        self._stop_requested = True
        self.signalled = True

    def ok(self) -> bool:
        return not self._stop_requested

    def stop(self) -> None:
        self._stop_requested = True

    def stop_ordered(self) -> bool:
        """True when the launcher ordered this stop (it leaves a stop order before it signals)."""
        return stop_order_path(self.run.run_dir, self.name).exists()

    def close(self, final_state: NodeState = NodeState.STOPPING) -> None:
        """Say goodbye and free everything. STOPPING tells the watchdog this node left on purpose;
        FAILED that it is down now (a crash, or a stop nobody ordered): see run_node."""
        self.state = final_state
        self.heartbeat(force=True)
        if final_state == NodeState.FAILED:
            # Say it a few more times: a node failing at start-up may fail before the watchdog's
            # subscription reaches it, and a lost "failed" would leave the watchdog waiting out its
            # start-up grace instead of braking now.
            deadline = now_ns() + FAREWELL_WAIT_NS
            while now_ns() < deadline:
                time.sleep(FAREWELL_REPEAT_S)
                self.heartbeat(force=True)
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # shutdown must finish even if one resource is broken
                log.warning("error while closing: %s", exc)
        for subscriber in self._subscribers:
            subscriber.close()
        self.clocks.close()
        self.publisher.close(linger_ms=FAREWELL_WAIT_NS // 1_000_000)  # the last heartbeat must go out
        self._stop_curve_server()  # after the publisher: its lingering heartbeat needs no new handshake
        self.context.term()
        os.close(self._name_lock)

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(NodeState.FAILED if exc_type is not None else NodeState.STOPPING)

    # -- sockets --------------------------------------------------------------------------
    def _serve_curve(self) -> CurveServer | None:
        """A CURVE server (with its ZAP handler) for a publisher on the network; None on ipc.
        Plain tcp is refused unless the settings say `insecure`."""
        if not is_network(self.endpoint) or self.identity is None:
            require_secure(f"node {self.name}", self.endpoint, False, self.settings.insecure)
            return None
        return CurveServer(self.context, self.identity)

    def _stop_curve_server(self) -> None:
        if self._curve_server is not None:
            self._curve_server.stop()
            self._curve_server = None

    def subscribe(self, name: str, topic: Topic, latest: bool, optional: bool = False) -> Subscriber | None:
        """Subscribe to input `name` (its edges: `node.inputs`, from the launch file), which must carry
        `topic`. An input the launch does not connect: None if `optional`, else ConfigError."""
        edges = self.input_edges(name, optional)
        if not edges:
            return None
        wrong = [str(e) for e in edges if e.topic is not topic]
        if wrong:
            raise ConfigError(f"node {self.name}: input {name} takes {topic.name}, not {', '.join(wrong)}")
        endpoints, curve = self.connector.connect([edge.node for edge in edges])
        subscriber = Subscriber(self.context, endpoints, topic, latest, curve=curve)
        subscriber.clocks = self.clocks
        self._subscribers.append(subscriber)
        self._poller.register(subscriber.socket, zmq.POLLIN)
        return subscriber

    def publish(self, topic: Topic, message: Message) -> None:
        self.publisher.publish(topic, message)

    def frame_sender(self, transport: FrameTransport, slots: int) -> FrameSender:
        sender = FrameSender(self.publisher, self.run.run_id, self.name, transport, slots)
        self._closers.append(sender.close)
        return sender

    def frame_receiver(self) -> FrameReceiver:
        receiver = FrameReceiver(ring_prefix=run_ring_prefix(self.run.run_id))
        self._closers.append(receiver.close)
        return receiver

    # -- the loop -------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> set[Subscriber]:
        """Wait up to timeout_s for input (less when a heartbeat is due); returns subscribers with input."""
        self.heartbeat()
        self._reconnect_dropped()
        timeout_ns = min(int(timeout_s * 1e9), max(0, self._next_heartbeat_ns - now_ns()))
        if not self._subscribers:
            time.sleep(timeout_ns / 1e9)
            ready: set[Subscriber] = set()
        else:
            events = dict(self._poller.poll(timeout_ns / 1e6))
            ready = {s for s in self._subscribers if s.socket in events}
        self.heartbeat()
        return ready

    def sleep_until(self, deadline_ns: int) -> None:
        """Sleep until the monotonic deadline or a stop request, sending heartbeats as they fall due."""
        while self.ok():
            self.heartbeat()
            self._reconnect_dropped()
            now = now_ns()
            if now >= deadline_ns:
                return
            # A heartbeat may have fallen due since heartbeat() read the clock: then sleep not at all.
            time.sleep(max(0, min(deadline_ns, self._next_heartbeat_ns) - now) / 1e9)

    def _reconnect_dropped(self) -> None:
        """Publishers that ZeroMQ gave up on (a squatter was on their port) are connected again from
        the loop, which owns the sockets (perception.reconnect)."""
        for subscriber in self._subscribers:
            subscriber.reconnect_dropped()

    def wait_for_subscribers(self, topic: Topic, count: int, timeout_s: float) -> bool:
        """Block (heartbeating) until `count` subscribers listen to `topic`; False on timeout or stop."""
        deadline = now_ns() + int(timeout_s * 1e9)
        while self.ok() and self.publisher.subscriber_count(topic) < count:
            if now_ns() >= deadline:
                return False
            self.sleep_until(min(deadline, now_ns() + 5_000_000))
        return self.ok()

    def wait_for_nodes(self, name: str, timeout_s: float) -> list[str]:
        """Block (heartbeating) until each node of heartbeat input `name` has sent a heartbeat, which
        it does only from its loop, after loading models and warming up. Returns the names still
        silent at the timeout."""
        waiting = set(self.input_publishers(name))
        heartbeats = self.subscribe(name, HEARTBEAT, latest=False)
        deadline = now_ns() + int(timeout_s * 1e9)
        try:
            while self.ok() and waiting and now_ns() < deadline:
                if heartbeats in self.poll(min(0.05, max(0.0, (deadline - now_ns()) / 1e9))):
                    waiting -= {r.message.node for r in heartbeats.receive() if r.message.state != NodeState.STOPPING}
        finally:
            self.unsubscribe(heartbeats)
        return sorted(waiting)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._poller.unregister(subscriber.socket)
        self._subscribers.remove(subscriber)
        subscriber.close()

    def heartbeat(self, force: bool = False) -> None:
        """Publish a heartbeat if one is due. Heartbeats come from the node's own loop, never from a
        side thread, so a node stuck in its work goes silent and the watchdog notices."""
        now = now_ns()
        if not force and now < self._next_heartbeat_ns:
            return
        self._next_heartbeat_ns = now + self.settings.heartbeat_period_ms * 1_000_000
        counters = dict(self.counters)
        for subscriber in self._subscribers:
            key = subscriber.topic.key
            counters[f"{key}.received"] = subscriber.received
            counters[f"{key}.malformed"] = subscriber.malformed
            counters[f"{key}.bad_stamp"] = subscriber.bad_stamp
            counters[f"{key}.superseded"] = subscriber.superseded
            counters[f"{key}.unsynced"] = subscriber.unsynced
        for host, estimate in self.clocks.estimates.items():
            counters[f"clock.{host}.offset_us"] = estimate.offset_ns // 1000
            counters[f"clock.{host}.uncertainty_us"] = estimate.uncertainty_ns // 1000
        frame_id, capture_ns = self.last_frame
        self._heartbeat_seq += 1
        self.publisher.publish(
            HEARTBEAT,
            Heartbeat(
                frame_id=frame_id, capture_ns=capture_ns, node=self.name, pid=os.getpid(),
                seq=self._heartbeat_seq, sent_ns=now, state=self.state, counters=counters,
            ),
        )


def node_argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--name", required=True, help="node name: its endpoint, heartbeats and logs use it")
    parser.add_argument("--config", required=True, type=Path, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--run-dir", default=None, help=f"socket directory (default ${RUN_DIR_ENV} or /tmp/perception)")
    return parser


def configure_logging(name: str, level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s.%(msecs)03d {name} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def run_node(description: str, config_type: type[C], body: Callable[[Node, C], None], argv: Sequence[str] | None = None,
             check: Callable[[C], None] | None = None) -> int:
    """Parse the command line, load and validate config, run `body` inside a Node, shut down cleanly.

    `check`: the node's own checks of its config beyond types and ranges (files it names, class
    names), raising ConfigError; the launcher runs the same before it starts anything.

    Returns the process exit code: 0 when the body finished or the launcher ordered the stop,
    EXIT_CONFIG for bad config or input (one line on stderr naming the culprit), EXIT_OUTPUT for an
    output it cannot write (one line too), EXIT_UNAVAILABLE for an input that did not open, 1 for a lost device or anything unexpected (a traceback
    follows), EXIT_SIGNALLED for a stop by a signal the launcher did not order. Only an exit 0 leaves
    quietly (a STOPPING heartbeat); every other exit says FAILED, so the watchdog treats the node as
    down at once.
    """
    args = node_argument_parser(description).parse_args(argv)
    configure_logging(args.name)
    try:
        config = load_config(args.config, config_type, args.set)
        if check is not None:
            check(config)
    except ConfigError as exc:
        log.error("bad config: %s", exc)
        return EXIT_CONFIG
    configure_logging(args.name, getattr(getattr(config, "node", None), "log_level", "info"))
    try:
        settings = with_launch_network(getattr(config, "node", None) or NodeSettings())
        node = Node(args.name, settings, RunContext.from_env(args.run_dir))
    except (RunDirError, ConfigError, SecurityError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    code = 1  # until the body returns or fails in a way we know
    try:
        body(node, config)
        code = EXIT_SIGNALLED if node.signalled and not node.stop_ordered() else 0
    except (FatalInputError, ConfigError, SecurityError) as exc:  # SecurityError: plain tcp or a missing key refused
        log.error("%s", exc)
        code = EXIT_CONFIG
    except OutputError as exc:
        log.error("%s", exc)
        code = EXIT_OUTPUT
    except InputUnavailableError as exc:
        log.error("%s", exc)
        code = EXIT_UNAVAILABLE
    except DeviceLostError as exc:
        log.error("%s", exc)
    finally:
        if code == EXIT_SIGNALLED:
            log.error("stopped by a signal the launcher did not order: leaving as failed")
        node.close(NodeState.STOPPING if code == 0 else NodeState.FAILED)
    return code
