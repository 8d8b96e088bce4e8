"""What a soak holds a running pipeline to, judged from what its nodes publish, by their own stamps.

Free of sockets and processes (perception.soak.observer feeds it), so each rule is tested exactly.

answered   Every frame from capture gets, by its capture + budget + allowance (the watchdog's
           fail-safe delay), a decision about it or a newer frame, or a fail-safe BRAKE from the
           watchdog stamped after its capture. Times are the deciding node's own stamp on the
           message (a decision's last stamp, a fail-safe's `watchdog` stamp), never when this
           process got round to reading it, so the observer's scheduling on a busy machine counts
           for nothing. A decision counts only if it names a frame seen from capture (same id and
           capture stamp: the watchdog's own trust rule), so one about a forged frame answers
           nothing; likewise a DEADLINE_MISS brake for a frame capture never sent. A frame the
           watchdog was not up for from its capture to its deadline + allowance (killed or stopped:
           its heartbeats, by their send stamps, silent longer than `silence`) and that nothing
           answered is left to the vehicle interface, which treats a silent watchdog as BRAKE
           (docs/ARCHITECTURE.md): counted and listed, not a violation.
recovered  A node is never silent (heartbeat send stamps, any pid of it) longer than its bound:
           what its launch entry promises (hang timeout + the launcher's longest restart delay +
           startup timeout). After each process fault the time until it heartbeats again (a new
           pid after a kill) is measured.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from perception.messages import Decision, FrameHeader, Heartbeat, NodeState, Reason

S = 1_000_000_000
KEEP_NS = 5 * S  # history kept behind the frames still to be judged
RECENT_FRAMES = 4096  # frames a decision may name (the watchdog keeps 1024)


@dataclass(frozen=True)
class Violation:
    invariant: str  # answered | recovered | unexpected_exit | resources | started
    t_ns: int
    detail: str


@dataclass
class _Recovery:
    kind: str
    node: str
    pid: int
    started_ns: int
    ends_ns: int  # when the fault was over (SIGCONT for a stop): a heartbeat must be sent after it
    new_pid: bool  # a kill: only another process of the node counts as back


@dataclass
class _UpSpan:
    """A stretch of heartbeats of one watchdog process, none further apart than `silence`."""

    pid: int
    first_ns: int
    last_ns: int
    open: bool = True


@dataclass
class Tally:
    frames: int = 0  # judged
    by_decision: int = 0
    by_failsafe: int = 0
    left_to_interface: list[tuple[int, int]] = field(default_factory=list)  # (frame_id, capture_ns)
    worst_ns: int | None = None  # latest answer relative to the deadline (negative: before it)
    decisions: int = 0  # decision nodes' decisions about frames seen from capture
    untrusted: int = 0  # decisions about frames never seen from capture (forged input)
    failsafes: dict[str, int] = field(default_factory=dict)  # watchdog BRAKEs by reason
    recoveries: dict[str, list[int]] = field(default_factory=dict)  # fault kind -> times to heartbeat again


class InvariantChecker:
    def __init__(self, budget_ns: int, allowance_ns: int, watchdog: str, silence_ns: int,
                 bounds_ns: dict[str, int], settle_ns: int = 200_000_000, lag_ns: int = 2 * S) -> None:
        """`bounds_ns`: node -> the longest it may be silent; `settle_ns`: from a watchdog's first
        heartbeat until it is taken to see frames (its subscriptions connect); `lag_ns`: how long
        after a deadline a frame is judged, so everything stamped by then has arrived."""
        self.budget_ns, self.allowance_ns, self.watchdog = budget_ns, allowance_ns, watchdog
        self.silence_ns, self.bounds_ns, self.settle_ns, self.lag_ns = silence_ns, bounds_ns, settle_ns, lag_ns
        self.tally = Tally()
        self.violations: list[Violation] = []
        self._window = (None, None)  # judge frames captured in [start, stop)
        self._frames: deque[FrameHeader] = deque()  # to judge, in capture order
        self._seen: dict[int, int] = {}  # capture_ns -> frame_id of recent frames from capture
        self._decisions: list[tuple[int, int, int]] = []  # (stamp, capture_ns, frame_id), not yet trusted or not
        self._brakes: list[tuple[int, int, int, Reason]] = []  # (stamp, capture_ns, frame_id, reason)
        self._spans: list[_UpSpan] = []  # the watchdog's
        self._last_beat: dict[str, int] = {}  # node -> send stamp of its newest heartbeat
        self._reported_silent: set[tuple[str, int]] = set()
        self._recoveries: list[_Recovery] = []

    # -- what the pipeline says -----------------------------------------------------------
    def start(self, t_ns: int) -> None:
        self._window = (t_ns, None)

    def stop(self, t_ns: int) -> None:
        self._window = (self._window[0], t_ns)

    def stop_if_running(self, t_ns: int) -> None:
        if self._window[1] is None:
            self.stop(t_ns)

    def on_frame(self, frame: FrameHeader) -> None:
        self._frames.append(frame)
        self._seen[frame.capture_ns] = frame.frame_id
        if len(self._seen) > RECENT_FRAMES:
            del self._seen[next(iter(self._seen))]

    def on_decision(self, decision: Decision) -> None:
        stamp = decision.stamps[-1].t_ns if decision.stamps else decision.capture_ns
        if decision.decided_by == self.watchdog and decision.failsafe:
            self._brakes.append((stamp, decision.capture_ns, decision.frame_id, decision.reason))
            self.tally.failsafes[decision.reason.name] = self.tally.failsafes.get(decision.reason.name, 0) + 1
        elif not decision.failsafe:
            self._decisions.append((stamp, decision.capture_ns, decision.frame_id))

    def on_heartbeat(self, beat: Heartbeat) -> None:
        sent, node = beat.sent_ns, beat.node
        previous = self._last_beat.get(node)
        bound = self.bounds_ns.get(node)
        if previous is not None and bound is not None and sent - previous > bound:
            self._silent(node, previous, sent)
        self._last_beat[node] = max(sent, previous or 0)
        alive = beat.state not in (NodeState.FAILED, NodeState.STOPPING)
        if node == self.watchdog:
            self._on_watchdog_beat(beat.pid, sent, alive)
        if alive:
            for recovery in [r for r in self._recoveries if r.node == node and sent > r.ends_ns
                             and (not r.new_pid or beat.pid != r.pid)]:
                self._recoveries.remove(recovery)
                self.tally.recoveries.setdefault(recovery.kind, []).append(sent - recovery.started_ns)

    def _on_watchdog_beat(self, pid: int, sent: int, alive: bool) -> None:
        span = self._spans[-1] if self._spans else None
        if span is not None and span.open and span.pid == pid and sent - span.last_ns <= self.silence_ns:
            span.last_ns = max(span.last_ns, sent)
            span.open = alive
        elif alive:
            if span is not None:
                span.open = False
            self._spans.append(_UpSpan(pid, sent, sent))
        elif span is not None:
            span.open = False

    def expect_recovery(self, kind: str, node: str, pid: int, started_ns: int, ends_ns: int, new_pid: bool) -> None:
        """A process fault hit `node`: time how long until it heartbeats again."""
        self._recoveries.append(_Recovery(kind, node, pid, started_ns, ends_ns, new_pid))

    def add(self, violation: Violation) -> None:
        self.violations.append(violation)

    def _silent(self, node: str, since_ns: int, until_ns: int | None) -> None:
        if (node, since_ns) in self._reported_silent:
            return
        self._reported_silent.add((node, since_ns))
        how = f"for {(until_ns - since_ns) / S:.1f} s" if until_ns else "and still is"
        self.add(Violation("recovered", since_ns, f"{node} sent no heartbeat {how} (bound "
                                                  f"{self.bounds_ns[node] / S:.1f} s)"))

    # -- judging --------------------------------------------------------------------------
    def judge(self, now_ns: int) -> list[Violation]:
        """Judge every frame whose deadline + allowance is `lag_ns` past; returns new violations."""
        before = len(self.violations)
        horizon = now_ns - self.lag_ns
        start, stop = self._window
        while self._frames and self._frames[0].capture_ns + self.budget_ns + self.allowance_ns <= horizon:
            frame = self._frames.popleft()
            limit = frame.capture_ns + self.budget_ns + self.allowance_ns
            if start is not None and frame.capture_ns >= start and (stop is None or limit <= stop):
                self._judge_frame(frame, limit)
        for node, last in self._last_beat.items():
            bound = self.bounds_ns.get(node)
            if bound is not None and horizon - last > bound and (stop is None or last + bound < stop):
                self._silent(node, last, None)
        self._prune(horizon)
        return self.violations[before:]

    def _judge_frame(self, frame: FrameHeader, limit: int) -> None:
        self.tally.frames += 1
        answers = [(stamp, f"a decision about frame {frame_id}") for stamp, captured, frame_id in self._decisions
                   if captured >= frame.capture_ns and self._seen.get(captured) == frame_id]
        answers += [(stamp, f"a {reason.name} brake") for stamp, captured, frame_id, reason in self._brakes
                    if stamp >= frame.capture_ns
                    and (reason != Reason.DEADLINE_MISS or self._seen.get(captured) == frame_id)]
        answer, what = min(answers, default=(None, "nothing"))
        if answer is not None and answer <= limit:
            late = answer - (frame.capture_ns + self.budget_ns)
            self.tally.worst_ns = late if self.tally.worst_ns is None else max(self.tally.worst_ns, late)
            if what.endswith("brake"):
                self.tally.by_failsafe += 1
            else:
                self.tally.by_decision += 1
        elif not self._watched(frame.capture_ns, limit):
            self.tally.left_to_interface.append((frame.frame_id, frame.capture_ns))
        else:
            when = "" if answer is None else f" stamped {(answer - frame.capture_ns) / 1e6:.1f} ms after capture"
            self.add(Violation("answered", frame.capture_ns, f"frame {frame.frame_id}: first answered by {what}{when}, "
                                                             f"where budget + allowance is "
                                                             f"{(self.budget_ns + self.allowance_ns) / 1e6:g} ms"))

    def _watched(self, capture_ns: int, limit: int) -> bool:
        """The watchdog heartbeated, one process without a gap, from before the frame's capture to past its limit."""
        return any(s.first_ns + self.settle_ns <= capture_ns and s.last_ns >= limit for s in self._spans)

    def _prune(self, horizon: int) -> None:
        """Forget what can no longer answer a frame still to be judged: memory stays flat over hours."""
        oldest = horizon - self.budget_ns - self.allowance_ns - KEEP_NS
        trusted = [(s, c, f) for s, c, f in self._decisions if c < oldest and self._seen.get(c) == f]
        self.tally.decisions += len(trusted)
        self.tally.untrusted += sum(1 for _, c, _ in self._decisions if c < oldest) - len(trusted)
        self._decisions = [d for d in self._decisions if d[1] >= oldest]
        self._brakes = [b for b in self._brakes if b[0] >= oldest]
        self._spans = [s for s in self._spans if s.last_ns >= oldest or s is self._spans[-1]]
        for capture_ns in [c for c in self._seen if c < oldest - KEEP_NS]:
            del self._seen[capture_ns]

    def finish(self, now_ns: int) -> list[Violation]:
        """Judge what is left (call once the pipeline has stopped), counting every decision seen;
        a node still waited for after a fault is a violation."""
        new = self.judge(now_ns + self.lag_ns + self.budget_ns + self.allowance_ns + KEEP_NS * 3)
        for recovery in self._recoveries:
            new.append(Violation("recovered", recovery.started_ns, f"{recovery.node} never came back after "
                                                                   f"{recovery.kind} (pid {recovery.pid})"))
            self.violations.append(new[-1])
        self._recoveries.clear()
        return new

    def recovering(self) -> set[str]:
        """Nodes hit by a process fault that have not heartbeated since."""
        return {r.node for r in self._recoveries}

    def last_heartbeat_ns(self, node: str) -> int | None:
        return self._last_beat.get(node)

    def summary(self) -> dict:
        tally = self.tally
        return {
            "frames": tally.frames, "answered_by_decision": tally.by_decision, "answered_by_failsafe": tally.by_failsafe,
            "left_to_interface": len(tally.left_to_interface),
            "left_to_interface_frames": [{"frame_id": f, "capture_ns": c} for f, c in tally.left_to_interface[:100]],
            "worst_answer_after_deadline_ms": None if tally.worst_ns is None else round(tally.worst_ns / 1e6, 2),
            "decisions": tally.decisions, "untrusted_decisions": tally.untrusted, "failsafes": dict(tally.failsafes),
            "recovery_s": {kind: _stats_s(times) for kind, times in sorted(tally.recoveries.items())},
        }


def _stats_s(times_ns: list[int]) -> dict:
    values = np.asarray(times_ns, np.float64) / S
    return {"count": int(values.size), "p50": round(float(np.median(values)), 2), "max": round(float(values.max()), 2)}
