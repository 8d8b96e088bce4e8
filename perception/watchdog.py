"""The watchdog's rules, free of sockets and clocks so they can be tested exactly.

Obligation: every captured frame must be answered by a decision within the budget, counted from
its capture time. A decision for a newer frame answers older ones too (a detector that skips
superseded frames is degrading on purpose, not failing). A frame still unanswered at its deadline
gets a fail-safe BRAKE at that moment, not later.

Other hosts: a frame captured on another host arrives with its stamps converted into this host's
clock (perception.clock) and the uncertainty of that conversion; its deadline is widened by that
uncertainty, so a clock estimate cannot make a frame look late that was not.

Trust: a decision answers frames only if it names a frame this watchdog saw captured (the same
frame id with the same capture stamp; from another host, the same within twice the frame's and the
decision's conversion uncertainties, since their copies went through other processes' clock
estimates); any other is counted as untrusted and ignored, so a forged
or corrupt decision cannot silence the deadlines of the frames after it. Stamps from the future
never get here (the subscriber drops them), and pending deadlines are kept in deadline order, so
no single frame can hold back the fail-safes of the others.

Liveness: every monitored node must heartbeat within `heartbeat_timeout_ms`. A silent node puts
the system in FAILSAFE: a BRAKE naming the node goes out at once and again every
`failsafe_repeat_ms` until it is back. A node whose last heartbeat said FAILED (it crashed, or
was stopped by a signal the launcher did not order) is down at once, without waiting for the
timeout. Only a node whose last heartbeat said STOPPING (the launcher ordered the stop, or it
finished its input, as a replay's source does at the end of its recording) is not waited for
until it heartbeats again; frames it leaves unanswered still fail safe.

Topics: every monitored topic of the topic table (frames, detections, decisions) is judged by
perception.topic_monitor (OK / WARN_RATE / ERROR_RATE / TIMEOUT). A topic below its error rate or
silent is down by the same rule as a silent node: a BRAKE naming it at once (reason TOPIC_DOWN,
or NODE_DOWN when a node is down too) and again every `failsafe_repeat_ms`. This catches what
heartbeats cannot: a capture node alive but its camera stalled, a detector heartbeating from its
loop but publishing nothing.

Degradation: when the p95 of capture-to-decision latency over the recent window exceeds
`degrade_fraction` of the budget, or a deadline was missed, the detector's depth ceiling is
lowered one step; it is raised one step again only after `relax_after` decisions with p95 under
`relax_fraction` of the budget and no miss (hysteresis). Changes are at least `window` decisions
apart, so one slow frame cannot swing the depth.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np

from perception.config import Fraction, Range, check_ranges
from perception.messages import (
    Action, Control, Decision, FrameHeader, Heartbeat, NodeState, Reason, Stamp, SystemState, TopicState, WatchdogStatus,
)
from perception.topic_monitor import DOWN_STATES, TopicLimits, TopicMonitor, as_health
from perception.topics import DECISIONS, MONITORED, Topic

MS = 1_000_000
RECENT_FRAMES = 1024  # frames a decision may name: far more than fit in any budget at any frame rate


@dataclass(frozen=True)
class WatchdogRules:
    heartbeat_timeout_ms: Annotated[float, Range(10, 10_000)] = 300.0
    startup_grace_ms: Annotated[float, Range(0, 600_000)] = 5000.0  # nodes get this long to send a first heartbeat
    failsafe_repeat_ms: Annotated[float, Range(1, 10_000)] = 100.0
    max_depth: Annotated[int, Range(0, 63)] = 1  # the detector's deepest exit index
    degrade_fraction: Fraction = 0.8
    relax_fraction: Fraction = 0.5
    window: Annotated[int, Range(1, 10_000)] = 20
    relax_after: Annotated[int, Range(1, 100_000)] = 50
    # Per-topic thresholds overriding the topic table's (perception.topics), by topic name; e.g. a
    # 5 Hz camera needs lower rates than the shipped 25-30 Hz launch files.
    topics: dict[str, TopicLimits] = field(default_factory=dict)
    monitored_topics: list[str] = field(default_factory=lambda: [t.name for t in MONITORED])
    topic_window_s: Annotated[float, Range(0.01, 60)] = 1.0

    def __post_init__(self) -> None:
        check_ranges(self)
        unknown = sorted((set(self.topics) | set(self.monitored_topics)) - {t.name for t in MONITORED})
        if unknown:
            raise ValueError(f"topics: {unknown} are not monitored topics (those are: {', '.join(t.name for t in MONITORED)})")
        if not 0 < self.relax_fraction < self.degrade_fraction:
            raise ValueError("need 0 < relax_fraction < degrade_fraction")


@dataclass
class Outputs:
    """What the node must publish after an event or a tick."""

    decisions: list[Decision] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)


@dataclass
class _Pending:
    frame_id: int
    capture_ns: int
    deadline_ns: int


@dataclass(frozen=True)
class _Seen:
    capture_ns: int
    uncertainty_ns: int  # of its conversion from another host's clock; 0 from this host


class WatchdogCore:
    def __init__(self, rules: WatchdogRules, name: str, start_ns: int, monitored: list[str],
                 publishers: dict[Topic, list[str]], control_target: str | None = None, budget_ms: float = 100.0) -> None:
        """`monitored`: the nodes whose heartbeats it watches; `publishers`: the nodes it reads each
        monitored topic from; `control_target`: the node its depth ceilings go to (the launch
        file's graph says all three); `budget_ms`: every frame's, the launch file's."""
        if not monitored:
            raise ValueError("a watchdog must watch at least one node's heartbeat")
        self.rules = rules
        self.name = name
        self.control_target = control_target or "*"
        self.budget_ms = budget_ms
        self.budget_ns = int(budget_ms * MS)
        self.depth_limit = rules.max_depth
        self.counters: dict[str, int] = {k: 0 for k in (
            "frames", "decisions", "deadline_misses", "late_decisions", "failsafes", "node_down_events",
            "degrade_steps", "relax_steps", "stale_dropped", "untrusted_decisions", "topic_down_events")}
        self.failsafe_delay_ns: deque[int] = deque(maxlen=10_000)  # fail-safe publish time minus its deadline
        self._pending: list[_Pending] = []  # in deadline order
        self._seen: OrderedDict[int, _Seen] = OrderedDict()  # recent frames by id
        self._answered_ns = -1  # capture time of the newest frame answered by a decision
        self._latencies: deque[int] = deque(maxlen=rules.window)
        self._misses_in_window: deque[bool] = deque(maxlen=rules.window)
        self._since_change = 0
        self._calm = 0
        self._last_seen = {node: start_ns + int(rules.startup_grace_ms * MS) - int(rules.heartbeat_timeout_ms * MS)
                           for node in monitored}
        self._down: set[str] = set()
        self._departed: set[str] = set()
        self._failed: set[str] = set()
        self._last_repeat_ns = 0
        self._last_frame = (0, 0)
        limits = {t: rules.topics.get(t.name) or TopicLimits.of(t) for t in MONITORED if t.name in rules.monitored_topics}
        self.topic_monitor = TopicMonitor(limits, publishers, start_ns, rules.startup_grace_ms, rules.topic_window_s)
        self._topic_states: dict[str, tuple[TopicState, float]] = {}  # name -> (state, rate), as of the last tick
        self._topics_down: set[str] = set()

    # -- events ---------------------------------------------------------------------------
    def on_message(self, topic: Topic, now_ns: int) -> None:
        """Every message received on a monitored topic, valid ones only: rate and liveness."""
        self.topic_monitor.on_message(topic, now_ns)

    def on_frame(self, header: FrameHeader, uncertainty_ns: int = 0) -> None:
        """A captured frame; `uncertainty_ns`: of its stamps' conversion from another host's clock."""
        self.counters["frames"] += 1
        self._last_frame = (header.frame_id, header.capture_ns)
        self._seen[header.frame_id] = _Seen(header.capture_ns, uncertainty_ns)
        self._seen.move_to_end(header.frame_id)
        if len(self._seen) > RECENT_FRAMES:
            self._seen.popitem(last=False)
        if header.capture_ns > self._answered_ns:
            pending = _Pending(header.frame_id, header.capture_ns, header.capture_ns + self.budget_ns + uncertainty_ns)
            bisect.insort(self._pending, pending, key=lambda p: p.deadline_ns)

    def on_decision(self, decision: Decision, now_ns: int, uncertainty_ns: int = 0) -> Outputs:
        """A decision; `uncertainty_ns`: of its stamps' conversion from another host's clock."""
        seen = self._seen.get(decision.frame_id)
        # Across hosts the frame's capture time reached the decision through other processes' clock
        # estimates, each off by up to its uncertainty: twice both is the most they can disagree.
        tolerance = 2 * (seen.uncertainty_ns + uncertainty_ns) if seen is not None else 0
        if seen is None or abs(decision.capture_ns - seen.capture_ns) > tolerance:
            self.counters["untrusted_decisions"] += 1  # not about a frame we saw: forged, corrupt or foreign
            return Outputs()
        self.topic_monitor.on_message(DECISIONS, now_ns)  # only trusted ones keep the topic alive
        self.counters["decisions"] += 1
        captured = seen.capture_ns  # this watchdog's own reading of it
        latency = now_ns - captured
        if latency > self.budget_ns + seen.uncertainty_ns:
            self.counters["late_decisions"] += 1  # its frame was already answered by a fail-safe
        self._answered_ns = max(self._answered_ns, captured)
        self._pending = [p for p in self._pending if p.capture_ns > captured]
        self._latencies.append(latency)
        self._misses_in_window.append(latency > self.budget_ns)
        return self._adapt_depth(decision)

    def on_heartbeat(self, beat: Heartbeat, now_ns: int) -> Outputs:
        if beat.node in self._last_seen:
            self._last_seen[beat.node] = now_ns
            self._departed.discard(beat.node)
            self._failed.discard(beat.node)
            if beat.state == NodeState.STOPPING:
                self._departed.add(beat.node)
            elif beat.state == NodeState.FAILED:
                self._failed.add(beat.node)
            if beat.node == self.control_target:
                # Frames the detector dropped unprocessed: too old when picked up, or a newer one was waiting.
                self.counters["stale_dropped"] = beat.counters.get("frames.stale", 0) + beat.counters.get("frames.superseded", 0)
        return Outputs()

    # -- time -----------------------------------------------------------------------------
    def next_wakeup_ns(self) -> int | None:
        """When tick() next has something to do (the earliest pending deadline), if anything."""
        return self._pending[0].deadline_ns if self._pending else None

    def tick(self, now_ns: int) -> Outputs:
        out = Outputs()
        while self._pending and self._pending[0].deadline_ns <= now_ns:
            missed = self._pending.pop(0)
            self.counters["deadline_misses"] += 1
            self._misses_in_window.append(True)
            out.decisions.append(self._failsafe(missed.frame_id, missed.capture_ns, Reason.DEADLINE_MISS,
                                                f"no decision within {self.budget_ms:g} ms of capture", now_ns))
            self.failsafe_delay_ns.append(now_ns - missed.deadline_ns)
        out.controls += self._degrade_on_miss(out)
        self._check_liveness(now_ns, out)
        return out

    def _check_liveness(self, now_ns: int, out: Outputs) -> None:
        timeout = int(self.rules.heartbeat_timeout_ms * MS)
        silent = {node for node, seen in self._last_seen.items() if now_ns - seen > timeout and node not in self._departed}
        down = silent | self._failed
        newly_down = down - self._down
        self.counters["node_down_events"] += len(newly_down)
        self._down = down
        self._topic_states = self.topic_monitor.judge(now_ns, self._departed)
        topics_down = {name: judged for name, judged in self._topic_states.items() if judged[0] in DOWN_STATES}
        newly_down_topics = set(topics_down) - self._topics_down
        self.counters["topic_down_events"] += len(newly_down_topics)
        self._topics_down = set(topics_down)
        repeat_due = now_ns - self._last_repeat_ns >= int(self.rules.failsafe_repeat_ms * MS)
        if (down or topics_down) and (newly_down or newly_down_topics or repeat_due):
            self._last_repeat_ns = now_ns
            details = [f"{n} failed" if n in self._failed else f"{n} silent {(now_ns - self._last_seen[n]) / MS:.0f} ms"
                       for n in sorted(down)]
            details += [f"{name} {state.name} {round(rate, 2):g} Hz" for name, (state, rate) in sorted(topics_down.items())]
            frame_id, capture_ns = self._last_frame
            reason = Reason.NODE_DOWN if down else Reason.TOPIC_DOWN
            out.decisions.append(self._failsafe(frame_id, capture_ns, reason, ", ".join(details), now_ns))

    # -- degradation ----------------------------------------------------------------------
    def _degrade_on_miss(self, out: Outputs) -> list[Control]:
        if out.decisions and self.depth_limit > 0 and self._since_change >= self.rules.window:
            return [self._set_depth(self.depth_limit - 1, "deadline missed", *self._last_frame)]
        return []

    def _adapt_depth(self, decision: Decision) -> Outputs:
        self._since_change += 1
        if len(self._latencies) < self.rules.window or self._since_change < self.rules.window:
            return Outputs()
        p95 = float(np.percentile(self._latencies, 95))
        missed = any(self._misses_in_window)
        if (missed or p95 > self.rules.degrade_fraction * self.budget_ns) and self.depth_limit > 0:
            self._calm = 0
            reason = f"p95 {p95 / MS:.0f} ms of {self.budget_ms:g} ms budget" + (", deadline missed" if missed else "")
            return Outputs(controls=[self._set_depth(self.depth_limit - 1, reason, decision.frame_id, decision.capture_ns)])
        if not missed and p95 < self.rules.relax_fraction * self.budget_ns:
            self._calm += 1
            if self._calm >= self.rules.relax_after and self.depth_limit < self.rules.max_depth:
                self._calm = 0
                reason = f"p95 {p95 / MS:.0f} ms, headroom back"
                return Outputs(controls=[self._set_depth(self.depth_limit + 1, reason, decision.frame_id, decision.capture_ns)])
        else:
            self._calm = 0
        return Outputs()

    def _set_depth(self, depth: int, reason: str, frame_id: int, capture_ns: int) -> Control:
        self.counters["degrade_steps" if depth < self.depth_limit else "relax_steps"] += 1
        self.depth_limit = depth
        self._since_change = 0
        return Control(frame_id=frame_id, capture_ns=capture_ns, target=self.control_target, max_depth=depth,
                       reason=reason)

    def control_now(self) -> Control:
        """The current ceiling, re-sent periodically so a restarted detector learns it."""
        frame_id, capture_ns = self._last_frame
        return Control(frame_id=frame_id, capture_ns=capture_ns, target=self.control_target,
                       max_depth=self.depth_limit, reason="current ceiling")

    # -- outputs --------------------------------------------------------------------------
    def _failsafe(self, frame_id: int, capture_ns: int, reason: Reason, detail: str, now_ns: int) -> Decision:
        self.counters["failsafes"] += 1
        return Decision(frame_id=frame_id, capture_ns=capture_ns, stamps=(Stamp("watchdog", now_ns),),
                        action=Action.BRAKE, reason=reason, decided_by=self.name, detail=detail)

    @property
    def state(self) -> SystemState:
        if self._down or self._topics_down:
            return SystemState.FAILSAFE
        return SystemState.DEGRADED if self.depth_limit < self.rules.max_depth else SystemState.NOMINAL

    def status(self) -> WatchdogStatus:
        frame_id, capture_ns = self._last_frame
        counters = dict(self.counters)
        if self.failsafe_delay_ns:
            counters["failsafe_delay_p99_us"] = int(np.percentile(self.failsafe_delay_ns, 99) / 1000)
        return WatchdogStatus(frame_id=frame_id, capture_ns=capture_ns, state=self.state, depth_limit=self.depth_limit,
                              nodes_down=tuple(sorted(self._down)), topics=as_health(self._topic_states),
                              counters=counters)
