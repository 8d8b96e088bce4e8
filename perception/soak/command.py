"""`perception soak LAUNCH`: run a launch for minutes on a looped source, inject faults at random
(seeded), and check invariants the whole time.

    perception soak LAUNCH [--minutes N | --seconds N] [--faults kill,stop,term,garbage,forged,load]
                           [--every S] [--seed K] [--json REPORT] [--failsafe-delay-ms MS]

The launch runs under the real launcher in this process, as `perception launch` runs it, changed
on purpose in four ways: every capture's source loops (`source.loop`, no `max_frames`); with
garbage or forged faults, every node input taking frames, detections or decisions also reads the
soak's rogue publisher (perception.soak.faults), an external publisher of the launch;
every node may be restarted as often as the soak kills it (`max_restarts`; the restart delays
are the launch file's); the status table comes once a minute.

Phases, timed from the moment every node heartbeats and frames flow: warm-up (judged, no faults,
ends with the first resource sample), faults every `--every` s on average (0.5x to 1.5x, at random),
cool-down (no faults; ends with the last resource sample once every node is back). Invariants
(perception.soak.invariants; resource growth, perception.soak.resources; and no node exits that no
fault hit) are checked the whole time; each violation is logged when found and listed with its time.
Exit status: 0 no violation, 1 violations, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import signal
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import zmq

from perception.config import ConfigError
from perception.latency import now_ns
from perception.graph import parse_inputs
from perception.launch import MAX_RESTART_DELAY_S, LaunchFile, Launcher, build_graph, load_launch_file, resolve_node_config
from perception.soak.faults import (
    DEFAULT_FAULTS, FAULT_KINDS, MESSAGE_FAULTS, PROCESS_FAULTS, ROGUE, Fault, Load, ProcessFaults, Rogue,
)
from perception.soak.invariants import InvariantChecker, Violation
from perception.soak.observer import Observer
from perception.soak.report import build_report, format_report, write_report
from perception.soak.resources import Limits, Sample, judge_growth, sample
from perception.topics import DECISIONS, DETECTIONS, FRAMES, Topic

log = logging.getLogger("soak")

S = 1_000_000_000
ROGUE_TOPICS = (FRAMES, DETECTIONS, DECISIONS)  # every input taking one of these also reads the rogue
SOAK_MAX_RESTARTS = 1_000_000
STARTUP_LIMIT_S = 180.0  # from launch to every node heartbeating and frames flowing
TICK_S = 0.05
STALL_NS = 50_000_000


@dataclass(frozen=True)
class Roles:
    """Who is who in the launch, and what each node was promised by its launch entry."""

    watchdog: str
    captures: list[str]  # the nodes the watchdog reads frames from
    deciders: list[str]  # the nodes it reads decisions from
    budget_ms: float
    silence_ms: float  # the watchdog's heartbeat timeout: a silent watchdog counts as down after it
    bounds_s: dict[str, float]  # node -> the longest it may be silent


@dataclass(frozen=True)
class Options:
    duration_s: float
    faults: tuple[str, ...]
    every_s: float
    seed: int
    allowance_ms: float  # the watchdog's fail-safe delay allowed on top of the budget
    limits: Limits
    targets: tuple[str, ...] | None = None  # nodes process faults may hit; None: every restartable one
    sample_s: float = 10.0
    budget_ms: float | None = None  # the budget to hold the pipeline to; None: the launch's

    @property
    def warmup_s(self) -> float:
        return min(60.0, max(10.0, 0.1 * self.duration_s))

    @property
    def cooldown_s(self) -> float:
        return min(60.0, max(15.0, 0.1 * self.duration_s))


def prepare(spec: LaunchFile, source: str, faults: set[str]) -> tuple[LaunchFile, Roles, list[Topic]]:
    """The launch as the soak runs it, the roles of its nodes and the topics the rogue can reach.
    ConfigError (one line) for a launch the soak cannot judge."""
    if spec.hosts:
        raise ConfigError(f"{source}: splits its nodes over hosts ({', '.join(spec.hosts)}): "
                          f"a soak runs a launch on one machine")
    watchdogs = [n for n in spec.nodes if n.node == "watchdog"]
    if len(watchdogs) != 1:
        raise ConfigError(f"{source}: a soak judges a pipeline by its watchdog: needs exactly one node with "
                          f"node: watchdog, found {len(watchdogs)}")
    graph = build_graph(spec, source)
    watchdog = resolve_node_config(watchdogs[0], source, spec.budget_ms, graph)[1]
    watched = graph.nodes[watchdogs[0].name].inputs
    captures = [e.node for e in watched.get("frames", ()) if e.node in graph.nodes]
    deciders = [e.node for e in watched.get("decisions", ()) if e.node in graph.nodes]
    rogue_topics: list[Topic] = []
    nodes = []
    for node in spec.nodes:
        params, inputs = dict(node.params), dict(node.inputs)
        if node.node == "capture":
            params.update({"source.loop": True, "max_frames": None})
        for name, edges in parse_inputs(node.inputs).items():
            topic = edges[0].topic
            if faults & MESSAGE_FAULTS and topic in ROGUE_TOPICS:
                inputs[name] = [*map(str, edges), f"{ROGUE}/{topic.output}"]
                rogue_topics += [topic] if topic not in rogue_topics else []
        nodes.append(dataclasses.replace(node, inputs=inputs, params=params,
                                         max_restarts=max(node.max_restarts, SOAK_MAX_RESTARTS)))
    bounds = {n.name: (n.hang_timeout_s or 0.0) + MAX_RESTART_DELAY_S + n.startup_timeout_s for n in spec.nodes}
    # What the launch promises: its budget (its nodes' params may not loosen it), else its watchdog's.
    budget_ms = spec.budget_ms
    roles = Roles(watchdogs[0].name, captures, deciders, budget_ms, watchdog.rules.heartbeat_timeout_ms, bounds)
    external = {**spec.external, ROGUE: [t.output for t in ROGUE_TOPICS]}
    return (dataclasses.replace(spec, nodes=nodes, external=external, status_period_s=max(spec.status_period_s, 60.0)),
            roles, rogue_topics)


class Soak:
    """Times the phases, injects the faults and samples resources, from a thread beside the launcher's."""

    def __init__(self, launcher: Launcher, observer: Observer, roles: Roles, options: Options,
                 rogue: Rogue | None) -> None:
        self.launcher, self.observer, self.roles, self.options, self.rogue = launcher, observer, roles, options, rogue
        self.rng = random.Random(options.seed)
        self.processes = ProcessFaults()
        self.load = Load()
        self.faults: list[Fault] = []
        self.skipped = 0  # process faults with no node up to take them
        self.samples: list[Sample] = []
        self.first: Sample | None = None
        self.last: Sample | None = None
        self.t0_ns: int | None = None
        self.judged_s = 0.0
        self.stall_max_ns = 0  # the longest this thread's ticks overslept
        self.stalls = 0  # ticks that overslept by more than STALL_NS
        self.ended_early: str | None = None
        self.launch_done = threading.Event()
        self.error: BaseException | None = None
        self._targeted: set[int] = set()  # pids a process fault hit
        self._accounted: set[int] = set()  # pids whose exit was looked at
        self._pids: dict[str, int] = {}
        self._given_up: set[str] = set()

    # -- the thread -----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced in the report; the launch must not run on unjudged
            self.error = exc
            log.exception("soak controller failed")
        finally:
            self.processes.close()
            self.load.close()
            with self.observer.lock:
                self.observer.checker.stop_if_running(now_ns())
            self.launcher.request_stop("soak finished" if self.error is None else "soak controller failed")

    def _run(self) -> None:
        if not self._wait(lambda: self._all_up() and self.observer.last_frame is not None, STARTUP_LIMIT_S):
            if not self._stopped():
                self.observer.add(Violation("started", now_ns(), f"the pipeline was not up (every node heartbeating, "
                                                                  f"frames flowing) within {STARTUP_LIMIT_S:g} s"))
            self.ended_early = self.launcher.stop_reason or "never started"
            return
        options = self.options
        t0 = self.t0_ns = now_ns()
        with self.observer.lock:
            self.observer.checker.start(t0)
        log.info("pipeline up: soak of %g s (warm-up %g s, cool-down %g s), faults %s every %g s, seed %d",
                 options.duration_s, options.warmup_s, options.cooldown_s, ",".join(options.faults), options.every_s,
                 options.seed)
        faults_from, end = t0 + int(options.warmup_s * S), t0 + int(options.duration_s * S)
        faults_until = end - int(options.cooldown_s * S)
        next_fault, next_sample = faults_from, t0
        while not self._stopped():
            now = now_ns()
            if now >= end:
                break
            self.processes.tick(now)
            self.load.tick(now)
            self._check_exits()
            if now >= next_sample:
                next_sample += int(options.sample_s * S)
                self._sample(now)
            if self.first is None and now >= faults_from and self._all_up():
                self.first = self._sample(now)  # the warm pipeline, before any fault
                next_fault = now
            if self.first is not None and next_fault <= now < faults_until:
                self._inject(now)
                next_fault = now + int(self.rng.uniform(0.5, 1.5) * options.every_s * S)
            self._sleep()
        if self._stopped():
            self.ended_early = self.launcher.stop_reason or "the launch ended"
            self.observer.add(Violation("started", now_ns(), f"the launch ended before the soak did: {self.ended_early}"))
        else:  # every node back, for a last sample comparable with the first
            self._wait(lambda: self._all_up() and not self.processes.stopped(), max(self.roles.bounds_s.values()))
            self._check_exits()
            self.last = self._sample(now_ns())
        self.judged_s = (now_ns() - t0) / S
        with self.observer.lock:
            self.observer.checker.stop(now_ns())
        if self.first is not None and self.last is not None:
            for problem in judge_growth(self.first, self.last, options.limits):
                self.observer.add(Violation("resources", self.last.t_ns, problem))

    def _sleep(self) -> None:
        """One tick; how late it wakes tells of stalls of this machine (or of this process's threads)."""
        before = time.monotonic_ns()
        time.sleep(TICK_S)
        late = time.monotonic_ns() - before - int(TICK_S * S)
        self.stall_max_ns = max(self.stall_max_ns, late)
        self.stalls += late > STALL_NS

    def _stopped(self) -> bool:
        return self.launch_done.is_set() or self.launcher.stop_reason is not None

    def _wait(self, condition: typing.Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._stopped() and time.monotonic() < deadline:
            self.processes.tick(now_ns())
            self._check_exits()
            if condition():
                return True
            time.sleep(TICK_S)
        return condition()

    # -- the pipeline's state -------------------------------------------------------------
    def _up(self, name: str) -> bool:
        """Running, heartbeating (by its own send stamps) and not waited for after a fault."""
        with self.observer.lock:
            last = self.observer.checker.last_heartbeat_ns(name)
            recovering = name in self.observer.checker.recovering()
        return last is not None and now_ns() - last <= max(self.roles.silence_ms * 1e6, 0.5 * S) and not recovering

    def _all_up(self) -> bool:
        return all(m.state == "running" and self._up(m.spec.name) for m in self.launcher.nodes)

    def _check_exits(self) -> None:
        """A node that exits with no fault aimed at it (a crash on bad input, a hang nobody caused)
        is a violation, and so is one the launcher will not start again."""
        if self.launcher.stop_reason is not None:
            return
        for managed in self.launcher.nodes:
            name, pid = managed.spec.name, managed.process.pid if managed.process else None
            old = self._pids.get(name)
            exited = [old] if old is not None and old != pid else []  # replaced by a restart
            exited += [pid] if pid is not None and managed.state != "running" else []  # gone, not yet replaced
            for gone in [p for p in exited if p not in self._accounted]:
                self._accounted.add(gone)
                if gone not in self._targeted:
                    detail = f"{name} (pid {gone}) exited (code {managed.exit_code}) with no fault aimed at it"
                    self.observer.add(Violation("unexpected_exit", now_ns(), detail))
            if pid is not None:
                self._pids[name] = pid
            if managed.state in ("failed", "exited") and name not in self._given_up:
                self._given_up.add(name)
                self.observer.add(Violation("recovered", now_ns(), f"{name} {managed.state}: the launcher will not "
                                                                   f"start it again"))

    def _sample(self, now: int) -> Sample:
        pids = [m.process.pid for m in self.launcher.nodes if m.process is not None and m.state == "running"]
        taken = sample(now, pids, os.getpid(), self.launcher.run_id, self._all_up())
        self.samples.append(taken)
        return taken

    # -- faults ---------------------------------------------------------------------------
    def _inject(self, now: int) -> None:
        kind = self.rng.choice(self.options.faults)
        if kind in PROCESS_FAULTS:
            fault = self._process_fault(kind, now)
        elif kind in MESSAGE_FAULTS:
            fault = Fault(now, kind, "rogue", self.rogue.inject(kind, now, self.observer.last_frame))
        else:
            seconds = self.rng.uniform(2.0, 6.0)
            self.load.start(now + int(seconds * S))
            fault = Fault(now, kind, "cpu", f"one busy process for {seconds:.1f} s")
        if fault is not None:
            self.faults.append(fault)
            log.info("fault %d at %.1f s: %s %s%s: %s", len(self.faults), (now - self.t0_ns) / S, kind, fault.target,
                     f" (pid {fault.pid})" if fault.pid else "", fault.detail)

    def _process_fault(self, kind: str, now: int) -> Fault | None:
        targets = self.options.targets
        candidates = [m for m in self.launcher.nodes if m.spec.restart != "never" and m.state == "running"
                      and (targets is None or m.spec.name in targets) and m.process is not None and self._up(m.spec.name)]
        if not candidates:
            self.skipped += 1
            return None
        managed = self.rng.choice(candidates)
        name, pid, hang = managed.spec.name, managed.process.pid, managed.spec.hang_timeout_s
        self._targeted.add(pid)
        checker = self.observer.checker
        if kind == "stop":
            longer = hang is not None and self.rng.random() < 0.5
            seconds = self.rng.uniform(1.3, 2.0) * hang if longer else self.rng.uniform(0.2, 0.6) * (hang or 1.0)
            if not self.processes.stop(pid, now + int(seconds * S)):
                return None
            resumed = now + int(seconds * S)
            with self.observer.lock:  # a long stop ends with the launcher's kill: back means a new process
                if longer:
                    checker.expect_recovery("stop>hang", name, pid, now, now, new_pid=True)
                else:
                    checker.expect_recovery("stop<hang", name, pid, resumed, resumed, new_pid=False)
            detail = f"SIGSTOP for {seconds:.2f} s ({'longer' if longer else 'shorter'} than its hang timeout {hang} s)"
        else:
            signum = signal.SIGKILL if kind == "kill" else signal.SIGTERM
            if not self.processes.send(pid, signum):
                return None
            with self.observer.lock:
                checker.expect_recovery(kind, name, pid, now, now, new_pid=True)
            detail = signal.Signals(signum).name
        return Fault(now, kind, name, detail, pid)


def run_soak(path: Path, options: Options) -> tuple[dict, int]:
    """Run the soak; returns its report and the exit status."""
    spec, roles, rogue_topics = prepare(load_launch_file(path), str(path), set(options.faults))
    strays = sorted(set(options.targets or ()) - {n.name for n in spec.nodes})
    if strays:
        raise ConfigError(f"--targets: {', '.join(strays)}: not nodes of {path} ({', '.join(n.name for n in spec.nodes)})")
    launcher = Launcher(spec, str(path))  # every config validated, the run directory made: nothing runs yet
    budget_ms = options.budget_ms if options.budget_ms is not None else roles.budget_ms
    checker = InvariantChecker(int(budget_ms * 1e6), int(options.allowance_ms * 1e6), roles.watchdog,
                               int(roles.silence_ms * 1e6), {n: int(s * S) for n, s in roles.bounds_s.items()})
    observer = Observer(checker, launcher.run_dir, roles.captures, roles.deciders, [n.spec.name for n in launcher.nodes])
    context = zmq.Context()
    rogue = (Rogue(context, launcher.run_dir, rogue_topics, random.Random(f"{options.seed}-rogue"))
             if rogue_topics else None)
    soak = Soak(launcher, observer, roles, options, rogue)
    thread = threading.Thread(target=soak.run, name="soak", daemon=True)
    thread.start()
    try:
        launcher_code = launcher.run()  # here, in the main thread: it handles SIGINT and SIGTERM
    finally:
        soak.launch_done.set()
        thread.join(60)
        if rogue is not None:
            rogue.close()
        context.term()
        observer.close()
    report = build_report(path, options, roles, soak, observer, launcher_code)
    return report, 1 if report["violations"]["total"] or soak.error is not None else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    faults = tuple(dict.fromkeys(f.strip() for f in args.faults.split(",") if f.strip()))
    unknown = [f for f in faults if f not in FAULT_KINDS]
    if unknown or not faults:
        raise ConfigError(f"--faults: {', '.join(unknown) or 'none given'}: the kinds are {', '.join(FAULT_KINDS)}")
    duration_s = args.seconds if args.seconds is not None else args.minutes * 60.0
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None
    options = Options(duration_s, faults, args.every, args.seed, args.failsafe_delay_ms,
                      Limits(args.max_rss_growth_mb, args.max_fd_growth, 0), targets, budget_ms=args.budget_ms)
    if args.every <= 0 or args.failsafe_delay_ms < 0:
        raise ConfigError("--every must be positive and --failsafe-delay-ms not negative")
    if duration_s < options.warmup_s + options.cooldown_s + args.every:
        raise ConfigError(f"a soak of {duration_s:g} s leaves no time for faults after its {options.warmup_s:g} s "
                          f"warm-up and before its {options.cooldown_s:g} s cool-down")
    report, code = run_soak(args.launch_file, options)
    print(format_report(report))
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perception soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("launch_file", type=Path, help="the launch to soak (e.g. launch/replay.yaml)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=1.0, help="how long, from the moment the pipeline is up")
    length.add_argument("--seconds", type=float, default=None, help="how long, in seconds instead")
    parser.add_argument("--faults", default=",".join(DEFAULT_FAULTS), help=f"kinds, from {','.join(FAULT_KINDS)}")
    parser.add_argument("--every", type=float, default=5.0, metavar="S", help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule: the same seed, the same faults")
    parser.add_argument("--targets", default=None, metavar="A,B",
                        help="nodes that kill, stop and term may hit (default: every node the launcher restarts)")
    parser.add_argument("--json", type=Path, default=None, metavar="REPORT", help="write the soak report here")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="hold every frame to this capture-to-decision budget (default: the launch's, else its watchdog's)")
    parser.add_argument("--failsafe-delay-ms", type=float, default=50.0,
                        help="how late after a frame's deadline its fail-safe may be stamped")
    parser.add_argument("--max-rss-growth-mb", type=float, default=100.0,
                        help="node memory growth allowed from the warm-up to the end")
    parser.add_argument("--max-fd-growth", type=int, default=8,
                        help="open file descriptors (launcher and nodes) growth allowed")
    return parser
