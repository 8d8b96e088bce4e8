"""The soak's report: a JSON document and a few lines for the terminal (schema in docs/RELIABILITY.md, "Soak")."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from perception.soak.resources import summarize

if TYPE_CHECKING:
    from perception.soak.command import Options, Roles, Soak
    from perception.soak.observer import Observer

INVARIANTS = ("answered", "recovered", "unexpected_exit", "resources", "started")
DROP_COUNTERS = (".malformed", ".bad_stamp", "frames.bad", "untrusted_decisions")
S = 1e9


def build_report(path: Path, options: "Options", roles: "Roles", soak: "Soak", observer: "Observer",
                 launcher_code: int) -> dict:
    checker = observer.checker
    t0 = soak.t0_ns or 0
    violations = sorted(checker.violations, key=lambda v: v.t_ns)
    by_invariant = Counter(v.invariant for v in violations)
    return {
        "launch": str(path),
        "seed": options.seed,
        "duration_s": round(soak.judged_s, 1),
        "faults_enabled": list(options.faults),
        "every_s": options.every_s,
        "budget_ms": roles.budget_ms,
        "failsafe_delay_ms": options.allowance_ms,
        "watchdog_silence_ms": roles.silence_ms,
        "recovery_bound_s": roles.bounds_s,
        **checker.summary(),
        "faults": dict(Counter(f.kind for f in soak.faults)),
        "process_faults": dict(Counter(f"{f.kind} {f.target}" for f in soak.faults if f.pid is not None)),
        "faults_skipped": soak.skipped,
        "rogue_messages": dict(sorted(soak.rogue.sent.items())) if soak.rogue else {},
        "dropped_by_nodes": observer.counter_totals(DROP_COUNTERS),
        "resources": summarize(soak.samples, soak.first, soak.last),
        "violations": {**{name: by_invariant.get(name, 0) for name in INVARIANTS}, "total": len(violations)},
        "violation_list": [{"t_s": round((v.t_ns - t0) / S, 3), "invariant": v.invariant, "detail": v.detail}
                           for v in violations],
        "fault_log": [{"t_s": round((f.t_ns - t0) / S, 3), "kind": f.kind, "target": f.target, "pid": f.pid,
                       "detail": f.detail} for f in soak.faults],
        "soak_tick_overslept_max_ms": round(soak.stall_max_ns / 1e6, 1),
        "soak_ticks_overslept_50ms": soak.stalls,
        "ended_early": soak.ended_early,
        "controller_error": None if soak.error is None else f"{type(soak.error).__name__}: {soak.error}",
        "launcher_exit_code": launcher_code,
    }


def format_report(report: dict) -> str:
    resources = report["resources"]
    failsafes = report["failsafes"]
    lines = [
        f"soak of {report['launch']}: {report['duration_s']:g} s judged, seed {report['seed']}, a fault every "
        f"{report['every_s']:g} s on average",
        "faults: " + (", ".join(f"{kind} {n}" for kind, n in sorted(report["faults"].items())) or "none")
        + (f" (process faults skipped, no node up: {report['faults_skipped']})" if report["faults_skipped"] else ""),
        f"frames {report['frames']} judged: answered by a decision {report['answered_by_decision']}, by a fail-safe "
        f"{report['answered_by_failsafe']}, left to the watchdog-silence rule {report['left_to_interface']}; "
        f"latest answer {_ms(report['worst_answer_after_deadline_ms'])} after the deadline "
        f"(budget {report['budget_ms']:g} ms + {report['failsafe_delay_ms']:g} ms allowed)",
        f"decisions {report['decisions']} (about forged frames, ignored: {report['untrusted_decisions']}), "
        f"fail-safe BRAKEs {sum(failsafes.values())} " + (f"({', '.join(f'{k} {v}' for k, v in sorted(failsafes.items()))})"
                                                         if failsafes else ""),
        "back after a fault (s): " + (", ".join(f"{kind} p50 {r['p50']:g} max {r['max']:g} (n={r['count']})"
                                                for kind, r in report["recovery_s"].items()) or "no process faults")
        + f"; bound {min(report['recovery_bound_s'].values()):g}-{max(report['recovery_bound_s'].values()):g} s",
        "dropped and counted by the nodes: " + (", ".join(f"{k} {v}" for k, v in report["dropped_by_nodes"].items() if v)
                                                or "none"),
    ]
    for key, label, unit in (("rss_mb", "node memory", " MB"), ("fds", "open fds", ""), ("shm_segments", "shm segments", "")):
        row = resources[key]
        lines.append(f"{label}: first {row['first']}{unit}, last {row['last']}{unit}, max {row['max']}{unit}, "
                     f"growth {row['growth']}{unit}")
    lines.append(f"this machine: the soak's own 50 ms ticks overslept by up to {report['soak_tick_overslept_max_ms']:g} ms "
                 f"({report['soak_ticks_overslept_50ms']} times by more than 50 ms)")
    counts = report["violations"]
    lines.append(f"violations: {counts['total']} (" + ", ".join(f"{k} {counts[k]}" for k in INVARIANTS) + ")")
    lines += [f"  {v['t_s']:9.3f} s {v['invariant']}: {v['detail']}" for v in report["violation_list"][:30]]
    if len(report["violation_list"]) > 30:
        lines.append(f"  ... {len(report['violation_list']) - 30} more in the JSON report")
    if report["controller_error"]:
        lines.append(f"the soak itself failed: {report['controller_error']}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} ms"


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
