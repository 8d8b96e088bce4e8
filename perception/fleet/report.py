"""The fleet's one report: per drive its decisions against its reference, its latency and its
accuracy where labelled, failures with their reason; copies of one drive checked against each
other; latency pooled over all drives. Table, JSON (docs/FLEET.md) and plots. No Ray here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception.evaluation.coco_ap import Detection, evaluate
from perception.evaluation.detector_eval import Annotations
from perception.latency import percentiles_ms
from perception.replay import compare_rows
from perception.report import QUANTILES

FLEET_SCHEMA_VERSION = 1
EXIT_OK = 0
EXIT_FAILED = 1  # a drive differs from its reference, copies disagree, or a drive failed
EXIT_BAD_INPUT = 2
DIFFERENCE_LINES_KEPT = 20


# A drive cut short (a crash while recording) replays to its last complete record: it ran, and says so.
TRUNCATED_REASON = "cut short: replayed to its last complete record"


@dataclass(frozen=True)
class Drive:
    path: Path  # absolute: what the task opens
    label: str  # as the user named it (a folder's drives: folder/name.mcap)
    sha256: str  # copies of one drive must decide alike
    reference: Path | None
    annotations: Path | None


def drive_entry(drive: Drive, result: dict, reference: list[dict] | None, annotations: Annotations | None) -> dict:
    """The report's object for one drive (docs/FLEET.md) from its task's result."""
    report = result.get("report") or {}
    entry = {
        "drive": drive.label, "path": str(drive.path), "sha256": drive.sha256, "status": result["status"],
        "reason": result.get("reason"), "frames": result.get("frames"), "decisions": len(result.get("rows") or []),
        "reference": str(drive.reference) if drive.reference else None, "differences": None, "difference_lines": [],
        "end_to_end_ms": report.get("end_to_end_ms") or {}, "exit_histogram": report.get("exit_histogram", {}),
        "actions": report.get("actions", {}), "accuracy": None, "seconds": result.get("seconds"),
        "host": result.get("host"), "run_id": result.get("run_id"), "run_dir": result.get("run_dir"),
        "log": result.get("log"), "log_tail": result.get("log_tail", []),
        "truncated": bool(result.get("truncated")),
    }
    if entry["truncated"] and result["status"] != "failed":
        entry["reason"] = TRUNCATED_REASON
    if result["status"] == "failed":
        return entry
    rows = result["rows"]
    if reference is not None:
        differences = compare_rows(reference, rows)
        entry.update(differences=len(differences), difference_lines=differences[:DIFFERENCE_LINES_KEPT],
                     status="identical" if not differences else "different")
    else:
        entry["status"] = "unchecked"
    if annotations is not None:
        entry["accuracy"] = {**accuracy(rows, annotations), "annotations": str(drive.annotations)}
    return entry


def accuracy(rows: list[dict], annotations: Annotations) -> dict:
    """COCO AP of the replay's published detections (the decision rows': score at least the
    detector's score_threshold, boxes to 0.1 px) against the drive's annotations. Frame id N of a
    replay is frame index N - 1 of the drive, as annotated video frames are indexed from 0. This is
    the pipeline's output, thresholded for driving, not `perception evaluate`'s low-threshold decode:
    AP comes out lower than that command's for the same frames."""
    detections = []
    decided = 0
    for row in rows:
        image = annotations.image_for_frame.get(row["frame_id"] - 1)
        if image is None or row["detections"] is None:
            continue
        decided += 1
        for class_id, score, x1, y1, x2, y2 in row["detections"]:
            category = annotations.category_for_class.get(int(class_id))
            if category is not None:
                detections.append(Detection(image, category, (x1, y1, x2 - x1, y2 - y1), float(score)))
    return {**evaluate(annotations.truths, detections).as_dict(), "frames_annotated": len(annotations.image_for_frame),
            "frames_scored": decided}


def consistency(entries: list[dict], rows: dict[str, list[dict]]) -> list[dict]:
    """Drives with the same content (sha256) that ran must give the same decisions: each is compared
    with the first of its group (compare_rows, the replay's own tolerances)."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["sha256"], []).append(entry)
    checks = []
    for sha, members in groups.items():
        ran = [m for m in members if m["status"] != "failed"]
        if len(ran) < 2:
            continue
        first = rows[ran[0]["drive"]]
        differences = {m["drive"]: len(compare_rows(first, rows[m["drive"]])) for m in ran[1:]}
        checks.append({"sha256": sha, "drives": [m["drive"] for m in ran], "identical": not any(differences.values()),
                       "differences": differences})
    return checks


def build_fleet_report(entries: list[dict], rows: dict[str, list[dict]], timelines: dict[str, list[int]],
                       settings: dict, wall_s: float) -> dict:
    """`entries`: drive_entry per drive; `rows` and `timelines` (end-to-end ns per decision) per drive label."""
    pooled = [value for entry in entries if entry["status"] != "failed" for value in timelines.get(entry["drive"], [])]
    report = {
        "schema_version": FLEET_SCHEMA_VERSION, **settings, "wall_s": round(wall_s, 3),
        "drives": entries,
        "consistency": consistency(entries, rows),
        "pooled_end_to_end_ms": {k: round(v, 3) for k, v in percentiles_ms(pooled, QUANTILES).items()},
        "summary": {status: sum(1 for e in entries if e["status"] == status)
                    for status in ("identical", "different", "unchecked", "failed")},
    }
    report["summary"]["drives"] = len(entries)
    report["summary"]["truncated"] = sum(1 for e in entries if e.get("truncated"))
    report["exit_code"] = exit_code(report)
    return report


def exit_code(report: dict) -> int:
    """0: every drive ran, and every one with a reference matches it and copies agree; else 1."""
    summary = report["summary"]
    if summary["failed"] or summary["different"] or not all(c["identical"] for c in report["consistency"]):
        return EXIT_FAILED
    return EXIT_OK


def format_table(report: dict) -> str:
    def ms(entry: dict, key: str) -> str:
        value = entry["end_to_end_ms"].get(key)
        return f"{value:.1f}" if value is not None else "-"

    width = max([len("drive")] + [len(e["drive"]) for e in report["drives"]])
    header = (f"{'#':>3}  {'drive':<{width}}  {'status':<9} {'frames':>6} {'decided':>7} {'diffs':>5} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'AP50':>5} {'s':>6}  reason")
    lines = [header]
    for number, e in enumerate(report["drives"], 1):
        diffs = "-" if e["differences"] is None else str(e["differences"])
        ap50 = f"{e['accuracy']['AP50']:.3f}" if e["accuracy"] else "-"
        seconds = f"{e['seconds']:.1f}" if e["seconds"] is not None else "-"
        lines.append(f"{number:>3}  {e['drive']:<{width}}  {e['status']:<9} {e['frames'] if e['frames'] is not None else '-':>6} "
                     f"{e['decisions']:>7} {diffs:>5} {ms(e, 'p50'):>7} {ms(e, 'p99'):>7} {ap50:>5} {seconds:>6}  "
                     f"{e['reason'] or ''}")
    pooled = report["pooled_end_to_end_ms"]
    if pooled:
        lines.append(f"pooled end to end over {int(pooled['count'])} decisions: p50 {pooled['p50']:.1f} ms  "
                     f"p99 {pooled['p99']:.1f} ms  max {pooled['max']:.1f} ms")
    for check in report["consistency"]:
        verdict = "identical decisions" if check["identical"] else f"DIFFERENT decisions {check['differences']}"
        lines.append(f"{len(check['drives'])} copies of {check['sha256'][:12]}: {verdict}")
    s = report["summary"]
    lines.append(f"{s['drives']} drives: {s['identical']} identical to their reference, {s['different']} different, "
                 f"{s['unchecked']} without a reference, {s['failed']} failed"
                 f"{f', {n} cut short (replayed to their last complete record)' if (n := s.get('truncated')) else ''}; "
                 f"{report['wall_s']:.1f} s on "
                 f"{report['cluster_cpus']:g} CPUs, {report['cpus_per_drive']} per drive")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return path


def drive_labels(drives: list[str]) -> list[str]:
    """Short names for drives on a plot's axis: each file's name without .mcap, or its path from the
    drives' common folder where two share a name."""
    names = [Path(d).name.removesuffix(".mcap") for d in drives]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(Path(d).parent) for d in drives]))
    return [str(Path(d).relative_to(common)).removesuffix(".mcap") for d in drives]


def plot_fleet(report: dict, timelines: dict[str, list[int]], directory: Path) -> list[Path]:
    """`fleet_latency.png`: a box per drive that ran (end to end, capture to decision) and one for
    all pooled, beside each drive's wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [e for e in report["drives"] if e["status"] != "failed" and timelines.get(e["drive"])]
    if not ran:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    samples = [np.asarray(timelines[e["drive"]], np.float64) / 1e6 for e in ran]
    labels = drive_labels([e["drive"] for e in ran])
    fig, (box, bars) = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(ran) + 5), 4.5), width_ratios=[2, 1])
    box.boxplot(samples + [np.concatenate(samples)], showfliers=True)
    box.set_xticks(range(1, len(ran) + 2), labels + ["all"], rotation=30, ha="right")
    box.set_xlabel("drive")
    box.set_ylabel("capture to decision (ms)")
    box.grid(alpha=0.3, axis="y")
    bars.bar(range(len(ran)), [e["seconds"] for e in ran], color="tab:blue")
    bars.set_xticks(range(len(ran)), labels, rotation=30, ha="right")
    bars.set_xlabel("drive")
    bars.set_ylabel("replay wall time (s)")
    fig.suptitle(f"fleet replay: {len(ran)} drives, end-to-end latency per drive")
    fig.tight_layout()
    path = directory / "fleet_latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
