"""The soak's view of a running pipeline: frames, decisions and heartbeats fed to the invariant
checker from a background thread, which judges as it goes and logs each violation when found."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq

from perception.latency import now_ns
from perception.soak.invariants import InvariantChecker, Violation
from perception.topics import DECISIONS, FRAMES, HEARTBEAT
from perception.transport import Subscriber, resolve_endpoint

log = logging.getLogger("soak")

JUDGE_PERIOD_NS = 250_000_000
MAX_LOGGED = 50  # violations logged as they are found; all are in the report


class Observer:
    def __init__(self, checker: InvariantChecker, run_dir: Path, captures: list[str], deciders: list[str],
                 nodes: list[str]) -> None:
        """Frames from `captures`, decisions from `deciders` and the watchdog, heartbeats from `nodes`."""
        self.checker = checker
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, int], dict[str, int]] = {}  # (node, pid) -> its last heartbeat's counters
        self.last_frame = None  # the newest frame from capture, for forged messages that name a real frame
        self._context = zmq.Context()
        endpoints = lambda names: [resolve_endpoint(n, run_dir) for n in names]  # noqa: E731
        self._frames = Subscriber(self._context, endpoints(captures), FRAMES, latest=False)
        self._decisions = Subscriber(self._context, endpoints([*deciders, checker.watchdog]), DECISIONS, latest=False)
        self._heartbeats = Subscriber(self._context, endpoints(nodes), HEARTBEAT, latest=False)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="soak-observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._observe()
        except BaseException as exc:  # a dead observer would pass every invariant: surfaced by close()
            self.error = exc

    def _observe(self) -> None:
        poller = zmq.Poller()
        subscribers = (self._frames, self._decisions, self._heartbeats)
        for subscriber in subscribers:
            poller.register(subscriber.socket, zmq.POLLIN)
        next_judgement = 0
        logged = 0
        while not self._stop.is_set():
            ready = dict(poller.poll(20))
            with self.lock:
                if self._frames.socket in ready:
                    for received in self._frames.receive():
                        self.checker.on_frame(received.message)
                        self.last_frame = received.message
                if self._decisions.socket in ready:
                    for received in self._decisions.receive():
                        self.checker.on_decision(received.message)
                if self._heartbeats.socket in ready:
                    for received in self._heartbeats.receive():
                        beat = received.message
                        self.checker.on_heartbeat(beat)
                        self.counters[(beat.node, beat.pid)] = dict(beat.counters)
                if now_ns() >= next_judgement:
                    next_judgement = now_ns() + JUDGE_PERIOD_NS
                    for violation in self.checker.judge(now_ns()):
                        logged += 1
                        if logged <= MAX_LOGGED:
                            log.error("violation (%s): %s", violation.invariant, violation.detail)

    def add(self, violation: Violation) -> None:
        with self.lock:
            self.checker.add(violation)
        log.error("violation (%s): %s", violation.invariant, violation.detail)

    def close(self) -> list[Violation]:
        """Stop observing and judge what is left; raises what stopped the observer early, if anything."""
        self._stop.set()
        self._thread.join(5)
        for subscriber in (self._frames, self._decisions, self._heartbeats):
            subscriber.close()
        self._context.term()
        if self.error is not None:
            raise RuntimeError(f"the soak's observer stopped: {type(self.error).__name__}: {self.error}") from self.error
        return self.checker.finish(now_ns())

    def counter_totals(self, suffixes: tuple[str, ...]) -> dict[str, int]:
        """Counters ending in one of `suffixes`, each summed over every process of every node (a
        restarted node starts its counters again)."""
        with self.lock:
            rows = list(self.counters.values())
        totals: dict[str, int] = {}
        for row in rows:
            for name, value in row.items():
                if name.endswith(suffixes):
                    totals[name] = totals.get(name, 0) + value
        return dict(sorted(totals.items()))
