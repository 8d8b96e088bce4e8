"""Clocks across hosts: the one place where a stamp from another host becomes a stamp of this one.

Every stamp is `perception.latency.now_ns()` (CLOCK_MONOTONIC) of the host that took it, and every
message names that host (`Message.clock`). A monotonic clock means nothing on another host, so
a receiver converts a remote message's capture time and stamps into its own clock at the boundary
(`ClockSync.to_local`, called by `perception.transport.Subscriber`) and nowhere else; from then on
every deadline and latency is local. A host it cannot convert from (never synced, or its estimate
too uncertain) is not trusted: the message is dropped and counted, never used with a guessed stamp.

Each host's launcher serves its clock (`ClockServer`, a ZeroMQ ROUTER): to a request it answers
with its monotonic time at receipt and at reply, and its CLOCK_TAI (or CLOCK_REALTIME) minus
monotonic. `ClockSync` asks each remote host's server every `period_s`, from a thread of its own
(clock sync is not a liveness signal, and a node busy in inference would read replies late), and
estimates, per host, `offset_ns` (add it to a remote stamp to get a local one) and its uncertainty:

    ntp  Four stamps per exchange (t0 sent, t1 received there, t2 replied there, t3 received
         here): offset = ((t0 - t1) + (t3 - t2)) / 2, round-trip delay = (t3 - t0) - (t2 - t1).
         The offset's error is at most delay / 2 (any asymmetry of the two legs), so of the last
         `window` exchanges the one with the least delay is used (as NTP's clock filter does),
         and its uncertainty is delay / 2 plus `drift_ppm` for the sample's age.
    ptp  The hosts' CLOCK_TAI (or CLOCK_REALTIME) is disciplined by PTP (linuxptp's ptp4l and
         phc2sys): both sides' TAI - monotonic differences give the offset without network
         timing; the uncertainty is the configured `ptp_accuracy_us` plus the same drift term.

`PERCEPTION_CLOCK_SKEW_NS` (perception.latency) shifts a process's monotonic clock: it stands in
for a second host's clock on one machine (the two-host tests and demos), nothing else uses it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Literal

import zmq

from perception.config import Range, check_ranges
from perception.latency import now_ns
from perception.messages import THIS_HOST, Message, Stamp, check_name
from perception.reconnect import Connections
from perception.security import CurveClient, CurveServer

log = logging.getLogger(__name__)

BURST_PERIOD_S = 0.02



@dataclass(frozen=True)
class ClockConfig:
    """How this host converts stamps from other hosts (the launch file's `clock` section)."""

    mode: Literal["ntp", "ptp"] = "ntp"
    period_s: Annotated[float, Range(0.01, 60)] = 0.5  # one exchange with each remote host this often
    burst: Annotated[int, Range(0, 100)] = 8  # at start, this many exchanges 20 ms apart (NTP's iburst): a good estimate within 0.2 s
    window: Annotated[int, Range(1, 1000)] = 16  # exchanges the best one is chosen from
    timeout_s: Annotated[float, Range(0.001, 10)] = 0.25  # an exchange not answered by then is lost
    drift_ppm: Annotated[float, Range(0, 1000)] = 50.0  # how far two monotonic clocks may run apart: uncertainty grows with a sample's age
    max_uncertainty_ms: Annotated[float, Range(0, 1000, low_open=True)] = 5.0  # a host less certain than this is not trusted: its messages are dropped
    ptp_clock: Literal["tai", "realtime"] = "tai"
    ptp_accuracy_us: Annotated[float, Range(0, 1e6)] = 100.0  # what PTP guarantees between the hosts' clocks on this network

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class Estimate:
    """A remote host's clock as seen from here: local = remote + offset_ns, give or take uncertainty_ns."""

    offset_ns: int
    uncertainty_ns: int
    delay_ns: int  # round trip of the exchange it comes from
    taken_ns: int  # local time of that exchange
    samples: int


def _clock_id(name: str) -> int:
    return time.CLOCK_TAI if name == "tai" else time.CLOCK_REALTIME


def reference_minus_monotonic_ns(ptp_clock: str) -> int:
    """This host's PTP-disciplined clock minus its monotonic clock (as perception.latency reads it)."""
    before = now_ns()
    reference = time.clock_gettime_ns(_clock_id(ptp_clock))
    after = now_ns()
    return reference - (before + after) // 2


class ClockServer:
    """Answers clock requests for this host: [t0] -> [t0, t1, t2, tai - mono, realtime - mono]."""

    def __init__(self, context: zmq.Context, endpoint: str, curve: CurveServer | None = None) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # only the launch's hosts may ask (and trust the answer: it is authenticated)
            curve.apply(self.socket)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close(0)  # else the context could never be terminated
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="clock-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.socket.poll(50):
                continue
            parts = self.socket.recv_multipart()
            received = now_ns()
            if len(parts) != 2 or len(parts[1]) > 64:
                continue  # not a clock request: ignored, never answered
            reply = json.dumps([parts[1].decode("ascii", "replace"), received, now_ns(),
                                reference_minus_monotonic_ns("tai"), reference_minus_monotonic_ns("realtime")])
            self.socket.send_multipart([parts[0], reply.encode()])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.socket.close(0)


class ClockSync:
    """Estimates of every remote host's clock, kept fresh by a thread; `to_local` converts messages."""

    def __init__(self, context: zmq.Context, servers: dict[str, str], config: ClockConfig | None = None,
                 host: str | None = None, curve: CurveClient | None = None) -> None:
        """`servers`: host name -> its clock server's endpoint; `curve`: keys for CURVE endpoints."""
        self.config = config or ClockConfig()
        self._curve = curve
        self.host = host or THIS_HOST
        for name in servers:
            check_name(name, "host")
        self._servers = dict(servers)
        self._context = context
        self._samples: dict[str, deque[Estimate]] = {h: deque(maxlen=self.config.window) for h in servers}
        self.estimates: dict[str, Estimate] = {}  # replaced whole by the thread: readers never see half an update
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clock-sync", daemon=True) if servers else None
        if self._thread:
            self._thread.start()

    # -- conversion -----------------------------------------------------------------------
    def estimate(self, host: str) -> Estimate | None:
        """The usable estimate of `host`'s clock now, with its uncertainty aged; None if there is none."""
        estimate = self.estimates.get(host)
        if estimate is None:
            return None
        aged = estimate.uncertainty_ns + int((now_ns() - estimate.taken_ns) * self.config.drift_ppm * 1e-6)
        if aged > self.config.max_uncertainty_ms * 1e6:
            return None
        return Estimate(estimate.offset_ns, aged, estimate.delay_ns, estimate.taken_ns, estimate.samples)

    def to_local(self, message: Message) -> tuple[Message, int] | None:
        """`message` with its capture time and stamps in this host's clock, and the uncertainty of
        that conversion (0 for a local message); None when its host cannot be trusted now."""
        if message.clock == self.host:
            return message, 0
        estimate = self.estimate(message.clock)
        if estimate is None:
            return None
        shift = estimate.offset_ns
        # capture_ns 0 is "no frame yet" (a heartbeat before the first frame, a status): not a time.
        capture = message.capture_ns + shift if message.capture_ns else 0
        stamps = [(s.stage, s.t_ns + shift) for s in message.stamps]
        sent = message.sent_ns + shift if hasattr(message, "sent_ns") else 0  # a heartbeat's send time is a stamp too
        if not all(0 <= t < 2**63 for t in (capture, sent, *(t for _, t in stamps))):
            return None  # outside this host's clock (a remote reboot, a wild estimate): not used, never raised
        fields = {"capture_ns": capture, "clock": self.host, "stamps": tuple(Stamp(stage, t) for stage, t in stamps)}
        if hasattr(message, "sent_ns"):
            fields["sent_ns"] = sent
        try:
            return dataclasses.replace(message, **fields), estimate.uncertainty_ns
        except ValueError:  # the shifted stamps break a rule of the message: as untrusted as a wild estimate
            return None

    def report(self) -> dict[str, dict]:
        """Per remote host: the offset in use and its uncertainty (for the latency report)."""
        out = {}
        for host in self._servers:
            estimate = self.estimate(host)
            out[host] = ({"offset_ms": round(estimate.offset_ns / 1e6, 3),
                          "uncertainty_ms": round(estimate.uncertainty_ns / 1e6, 3), "mode": self.config.mode}
                         if estimate else {"offset_ms": None, "uncertainty_ms": None, "mode": self.config.mode})
        return out

    # -- the exchange thread --------------------------------------------------------------
    def _run(self) -> None:
        servers: dict[str, Connections] = {}
        try:
            for host, endpoint in self._servers.items():
                socket = self._context.socket(zmq.DEALER)
                socket.setsockopt(zmq.LINGER, 0)
                # Connected again if a squatter on the server's port made libzmq give up (perception.reconnect).
                servers[host] = Connections(socket, [endpoint], self._curve)
            rounds = 0
            while not self._stop.is_set():
                started = time.monotonic()
                for host, server in servers.items():
                    server.check()
                    self._exchange(host, server.socket)
                rounds += 1
                period = BURST_PERIOD_S if rounds < self.config.burst else self.config.period_s
                self._stop.wait(max(0.0, period - (time.monotonic() - started)))
        finally:
            for server in servers.values():
                server.close()
                server.socket.close(0)

    def _exchange(self, host: str, socket: zmq.Socket) -> None:
        while socket.poll(0):
            socket.recv()  # a late answer to an earlier request: its t3 would be wrong
        t0 = now_ns()
        try:
            socket.send(str(t0).encode(), zmq.NOBLOCK)  # no connection to the server now: a lost exchange
        except zmq.Again:
            return
        if not socket.poll(int(self.config.timeout_s * 1000)):
            return
        t3 = now_ns()
        try:
            echoed, t1, t2, tai, realtime = json.loads(socket.recv())
            if echoed != str(t0) or not all(isinstance(v, int) for v in (t1, t2, tai, realtime)):
                return
        except (ValueError, TypeError):
            return
        sample = self._sample(t0, t1, t2, t3, tai, realtime)
        if sample is not None:
            self._accept(host, sample)

    def _accept(self, host: str, sample: Estimate) -> None:
        """One exchange's sample into `host`'s window, and the window's best as its estimate."""
        now = sample.taken_ns
        current = self.estimates.get(host)
        if current is not None and abs(sample.offset_ns - current.offset_ns) > (
                sample.uncertainty_ns + current.uncertainty_ns + (now - current.taken_ns) * self.config.drift_ppm * 1e-6):
            # The remote clock stepped (a reboot restarts CLOCK_MONOTONIC): the old samples, however
            # quick, describe a clock that no longer exists. Start again, as NTP does.
            self._samples[host].clear()
            log.warning("clock of host %s stepped by %.3f ms: estimate restarted", host,
                        (sample.offset_ns - current.offset_ns) / 1e6)
        self._samples[host].append(sample)
        best = min(self._samples[host], key=lambda s: s.uncertainty_ns + (now - s.taken_ns) * self.config.drift_ppm * 1e-6)
        self.estimates = {**self.estimates, host: Estimate(best.offset_ns, best.uncertainty_ns, best.delay_ns,
                                                            best.taken_ns, len(self._samples[host]))}

    def _sample(self, t0: int, t1: int, t2: int, t3: int, tai: int, realtime: int) -> Estimate | None:
        delay = (t3 - t0) - (t2 - t1)
        if delay < 0:
            return None  # the server's clock ran backwards within one exchange: not a clock to trust
        if self.config.mode == "ntp":
            return Estimate(((t0 - t1) + (t3 - t2)) // 2, delay // 2, delay, t3, 1)
        remote = tai if self.config.ptp_clock == "tai" else realtime
        offset = remote - reference_minus_monotonic_ns(self.config.ptp_clock)
        return Estimate(offset, int(self.config.ptp_accuracy_us * 1000), delay, t3, 1)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(1.0)



def main(argv: list[str] | None = None) -> int:
    """`python -m perception.clock ENDPOINT`: serve this host's clock alone (a host whose nodes run
    without a launcher); a launcher of a launch with hosts serves it itself."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m perception.clock", description=main.__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="e.g. tcp://0.0.0.0:5600")
    args = parser.parse_args(argv)
    context = zmq.Context()
    try:
        server = ClockServer(context, args.endpoint)
    except zmq.ZMQError as exc:
        print(f"clock: cannot bind {args.endpoint}: {exc}", flush=True)
        return 2
    print(f"clock of host {THIS_HOST} served at {server.endpoint}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.close()
    context.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
