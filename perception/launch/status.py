"""What a launch shows of itself: a row per node (process state, restarts, heartbeat age, last frame,
counters) and the watchdog's view of every monitored topic, printed as a table every status
period and kept as JSON in a status file that is replaced whole, never half-written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from perception.latency import now_ns
from perception.launch.process import ManagedNode
from perception.messages import NodeState, WatchdogStatus


def node_rows(nodes: Sequence[ManagedNode]) -> list[dict]:
    rows = []
    now = now_ns()
    for m in nodes:
        beat = m.heartbeat
        rows.append({
            "name": m.spec.name, "pid": m.process.pid if m.process else None, "state": m.state,
            "node_state": NodeState(beat.state).name.lower() if beat else None,
            "restarts": m.restarts, "hangs": m.hangs, "exit_code": m.exit_code,
            "heartbeat_age_ms": round((now - m.heartbeat_ns) / 1e6, 1) if beat else None,
            "last_frame": beat.frame_id if beat else None,
            "counters": dict(beat.counters) if beat else {},
        })
    return rows


def topic_rows(status: WatchdogStatus | None) -> list[dict]:
    """The watchdog's view of every monitored topic: state and measured rate."""
    if status is None:
        return []
    return [{"topic": t.topic, "state": t.state.name, "rate_hz": t.rate_hz} for t in status.topics]


def print_status(nodes: list[dict], topics: list[dict]) -> None:
    lines = [f"{'node':<12} {'pid':>7} {'state':<10} {'restarts':>8} {'hb age':>8} {'frame':>7}  counters"]
    for row in nodes:
        counters = " ".join(f"{k}={v}" for k, v in row["counters"].items() if v)
        age = f"{row['heartbeat_age_ms']:.0f}ms" if row["heartbeat_age_ms"] is not None else "-"
        lines.append(f"{row['name']:<12} {row['pid'] or '-':>7} {row['state']:<10} {row['restarts']:>8} "
                     f"{age:>8} {row['last_frame'] if row['last_frame'] is not None else '-':>7}  {counters}")
    if topics:
        lines.append("topics: " + "  ".join(f"{t['topic']} {t['state']} {t['rate_hz']:g} Hz" for t in topics))
    print("\n".join(lines), file=sys.stderr, flush=True)


def write_status_file(path: Path, run_id: str, run_dir: Path, nodes: list[dict], topics: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "run_dir": str(run_dir), "nodes": nodes, "topics": topics}))
    tmp.replace(path)
