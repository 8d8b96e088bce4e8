"""Collect what a running pipeline publishes and turn it into a latency report.

Per stage (from the stamps every decision carries: capture, transport, preprocess, each stage and
exit of the detector, postprocess, decision) and end to end (capture to a consumer receiving the
published decision): p50, p90, p99, p99.9, max, mean, jitter. Plus deadline misses and miss rate,
fail-safes, dropped/stale frames and the exit histogram. Output: a terminal table, a JSON report
(schema in docs/REPORT.md) and PNG plots (latency histogram and CDF; timeline with the budget).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from perception.clock import ClockSync
from perception.connector import Connector
from perception.graph import Graph
from perception.latency import now_ns, percentiles_ms, stage_durations_ns
from perception.messages import Decision, Detections, WatchdogStatus
from perception.topics import DECISIONS, DETECTIONS, HEARTBEAT, WATCHDOG_STATUS
from perception.transport import Subscriber

REPORT_SCHEMA_VERSION = 1
QUANTILES = (50, 90, 99, 99.9)


@dataclass
class Collected:
    decisions: list[tuple[int, Decision]] = field(default_factory=list)  # (received_ns, decision)
    detections: list[Detections] = field(default_factory=list)
    status: WatchdogStatus | None = None
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> last heartbeat counters
    clocks: dict[str, dict] = field(default_factory=dict)  # other host -> the clock offset used for its stamps


class CollectorError(RuntimeError):
    pass


class Collector:
    """Subscribes to a running pipeline's outputs from a background thread."""

    def __init__(self, graph: Graph, connector: Connector, clock_servers: dict[str, str] | None = None) -> None:
        """Reads what the launch's `graph` publishes on the topics it reports, where `connector` says
        its nodes are; `clock_servers`: host -> clock server, to convert other hosts' stamps
        (perception.clock)."""
        self.data = Collected()
        self._context = zmq.Context()
        self._clocks = ClockSync(self._context, clock_servers or {})
        self._subs = []
        for topic in (DECISIONS, DETECTIONS, WATCHDOG_STATUS, HEARTBEAT):
            if graph.publishers(topic):
                endpoints, curve = connector.connect([edge.node for edge in graph.publishers(topic)])
                self._subs.append(Subscriber(self._context, endpoints, topic, latest=False, curve=curve))
        for subscriber in self._subs:
            subscriber.clocks = self._clocks
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._collect()
        except Exception as exc:  # surfaced by close(): a report from a dead collector would be silently short
            self.error = exc

    def _collect(self) -> None:
        poller = zmq.Poller()
        for sub in self._subs:
            poller.register(sub.socket, zmq.POLLIN)
        decisions, detections, status, heartbeats = self._subs
        while not self._stop.is_set():
            for sub in self._subs:
                sub.reconnect_dropped()  # publishers on other hosts whose ports were squatted (perception.reconnect)
            events = dict(poller.poll(20))
            received_ns = now_ns()
            with self._lock:
                if decisions.socket in events:
                    self.data.decisions += [(received_ns, r.message) for r in decisions.receive()]
                if detections.socket in events:
                    self.data.detections += [r.message for r in detections.receive()]
                if status.socket in events:
                    for r in status.receive():
                        self.data.status = r.message
                if heartbeats.socket in events:
                    for r in heartbeats.receive():
                        self.data.counters[r.message.node] = dict(r.message.counters)

    def decision_count(self) -> int:
        with self._lock:
            return sum(1 for _, d in self.data.decisions if not d.failsafe)

    def close(self) -> Collected:
        """Stop collecting; raises CollectorError if collection stopped early, as the data would be incomplete."""
        self._stop.set()
        self._thread.join(2)
        for sub in self._subs:
            sub.close()
        self.data.clocks = self._clocks.report()
        self._clocks.close()
        self._context.term()
        if self.error is not None:
            raise CollectorError(f"the harness stopped collecting mid-run: {type(self.error).__name__}: {self.error}")
        return self.data


def _stage_group(stage: str) -> str:
    return {"capture": "capture", "publish": "capture", "det.recv": "transport", "det.preprocess": "preprocess",
            "det.post": "postprocess", "decision": "decision"}.get(stage, stage.removeprefix("det."))


def build_report(collected: Collected, budget_ms: float, frames_sent: int | None = None, title: str = "") -> dict:
    """The JSON report (docs/REPORT.md)."""
    node_decisions = [(t, d) for t, d in collected.decisions if not d.failsafe]
    failsafes = [d for _, d in collected.decisions if d.failsafe]
    stages: dict[str, list[int]] = {}
    for _, decision in node_decisions:
        per_frame: dict[str, int] = {}
        for stage, duration in stage_durations_ns(decision.capture_ns, decision.stamps).items():
            group = _stage_group(stage)
            per_frame[group] = per_frame.get(group, 0) + duration
        for group, duration in per_frame.items():
            stages.setdefault(group, []).append(duration)
    end_to_end = [t - d.capture_ns for t, d in node_decisions]
    budget_ns = int(budget_ms * 1e6)
    misses = sum(1 for v in end_to_end if v > budget_ns)
    exits = Counter(d.exit_index for d in collected.detections)
    counters = collected.counters
    detector = counters.get("detector", {})
    watchdog = dict(collected.status.counters) if collected.status else {}
    frames = frames_sent if frames_sent is not None else counters.get("capture", {}).get("frames.sent")
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "title": title,
        "budget_ms": budget_ms,
        "frames_captured": frames,
        "decisions": len(node_decisions),
        "end_to_end_ms": _stats(end_to_end),
        "stages_ms": {stage: _stats(values) for stage, values in stages.items()},
        # A miss is a frame left without a decision about it (or a newer frame) within the budget: the
        # watchdog counts exactly that. Late decisions are the same events seen from the decision side.
        "deadline_misses": {"frames_missed": watchdog.get("deadline_misses", misses), "late_decisions": misses,
                            "watchdog_failsafes": len(failsafes),
                            "miss_rate": round(watchdog.get("deadline_misses", misses) / frames, 4) if frames else None},
        "dropped_frames": {"stale": detector.get("frames.stale", 0), "superseded": detector.get("frames.superseded", 0),
                           "overwritten": detector.get("frames.overwritten", 0), "bad": detector.get("frames.bad", 0),
                           "stale_detections": counters.get("decision", {}).get("detections.stale", 0)},
        "exit_histogram": {str(k): v for k, v in sorted(exits.items())},
        "actions": dict(Counter(d.action.name for _, d in node_decisions)),
        "timeline": [{"frame_id": d.frame_id, "capture_ns": d.capture_ns, "end_to_end_ns": t - d.capture_ns}
                     for t, d in node_decisions],
        "failsafes": [{"frame_id": d.frame_id, "capture_ns": d.capture_ns, "reason": d.reason.name}
                      for d in sorted(failsafes, key=lambda d: d.frame_id)],
        "clock_offsets": collected.clocks,
    }


def _stats(values_ns: list[int]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in percentiles_ms(values_ns, QUANTILES).items()}


def format_report(report: dict) -> str:
    order = ["capture", "transport", "warm", "preprocess"]
    parts = [s for s in report["stages_ms"] if s not in order + ["postprocess", "decision"]]
    rows = [(s, report["stages_ms"][s]) for s in order + parts + ["postprocess", "decision"] if s in report["stages_ms"]]
    rows.append(("end to end", report["end_to_end_ms"]))
    header = f"{'stage (ms)':<14}" + "".join(f"{c:>9}" for c in ("p50", "p90", "p99", "p99.9", "max", "mean", "jitter"))
    lines = [report["title"], header] if report["title"] else [header]
    for name, stats in rows:
        if stats:
            lines.append(f"{name:<14}" + "".join(f"{stats[c]:>9.2f}" for c in ("p50", "p90", "p99", "p99.9", "max", "mean", "jitter")))
    misses, dropped = report["deadline_misses"], report["dropped_frames"]
    lines.append(f"frames {report['frames_captured']}  decisions {report['decisions']}  budget {report['budget_ms']:g} ms  "
                 f"missed {misses['frames_missed']}  miss rate {misses['miss_rate']}  late decisions "
                 f"{misses['late_decisions']}  fail-safes {misses['watchdog_failsafes']}")
    lines.append("dropped " + "  ".join(f"{k} {v}" for k, v in dropped.items()) +
                 f"  | exits {report['exit_histogram']}  | actions {report['actions']}")
    for host, clock in report.get("clock_offsets", {}).items():
        lines.append(f"clock of host {host}: " + (f"offset {clock['offset_ms']:+.3f} ms +- {clock['uncertainty_ms']:.3f} "
                                                  f"({clock['mode']})" if clock["offset_ms"] is not None else "not synced"))
    return "\n".join(lines)


def write_outputs(report: dict, json_path: Path | None, plots_dir: Path | None) -> list[Path]:
    written = []
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1))
        written.append(json_path)
    if plots_dir:
        written += plot_report(report, plots_dir)
    return written


def timeline_seconds(report: dict) -> tuple[np.ndarray, list[float]]:
    """Capture times of the decided frames and of the fail-safes, in seconds from the earliest
    capture of either: a fail-safe for a frame captured before the first decided one is not drawn
    before the axis starts."""
    captures = [row["capture_ns"] for row in report["timeline"]]
    failsafes = [row["capture_ns"] for row in report.get("failsafes", [])]
    t0 = min(captures + failsafes)
    return np.array([(c - t0) / 1e9 for c in captures]), [(c - t0) / 1e9 for c in failsafes]


def plot_report(report: dict, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    directory.mkdir(parents=True, exist_ok=True)
    e2e = np.array([row["end_to_end_ns"] for row in report["timeline"]], np.float64) / 1e6
    if e2e.size == 0:
        return []
    budget = report["budget_ms"]
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(10, 4))
    hist.hist(e2e, bins=40, color="tab:blue")
    hist.axvline(budget, color="tab:red", ls="--", label=f"budget {budget:g} ms")
    hist.set_xlabel("capture to decision (ms)")
    hist.set_ylabel("frames")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))  # frames come whole
    hist.legend()
    ordered = np.sort(e2e)
    cdf.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered))
    cdf.axvline(budget, color="tab:red", ls="--")
    cdf.set_xlabel("capture to decision (ms)")
    cdf.set_ylabel("fraction of frames")
    cdf.grid(alpha=0.3)
    fig.suptitle(report["title"] or "end-to-end latency")
    fig.tight_layout()
    histogram_path = directory / "latency_histogram_cdf.png"
    fig.savefig(histogram_path, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    times, failsafe_times = timeline_seconds(report)
    ax.plot(times, e2e, ".-", ms=3, lw=0.8, label="capture to decision")
    if failsafe_times:
        ax.plot(failsafe_times, [budget] * len(failsafe_times), "x", color="tab:red", ms=8, mew=2,
                label=f"fail-safe BRAKE ({len(failsafe_times)})")
    ax.axhline(budget, color="tab:red", ls="--", label=f"budget {budget:g} ms")
    ax.set_xlabel("time since the first frame's capture (s)")
    ax.set_ylabel("capture to decision (ms)")
    ax.set_title(f"{report['title'] or 'end-to-end latency'}: every frame, in capture order")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    timeline_path = directory / "latency_timeline.png"
    fig.savefig(timeline_path, dpi=100)
    plt.close(fig)
    return [histogram_path, timeline_path]
