"""Adaptive depth over time: accuracy against detector time for keyframe intervals, the shallow
exit and the adaptive gate, on the development clip (PETS09-S2L1 frames 1-400), every frame in order.

    perception bench-temporal [--passes 3] [--json F] [--plot F.png] [--only NAME ...]
    perception bench-temporal --drive [RECORDING]     # adaptive vs full depth on a drive, frame by frame

Rows: the network on every frame at full depth (the reference) and at exit 0; the network every
N frames with optical flow in between (N = 2..8); the adaptive gate with and without its risk rule
(the ego path of a forward camera means little in a fixed surveillance view, so both are shown).
Each row reports AP50, AP50:95, MOTA, IDF1, ID switches and the detector's time per frame; the
Pareto plot puts them side by side. Frames 401-795 of the clip are withheld from this project on
purpose: nothing here was tuned on them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from perception.detection.adaptive import AdaptiveDetector
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.detection.policy import PolicyConfig
from perception.detection.temporal import DECISION_CONFIG, TemporalConfig
from perception.engines import EngineConfig, create_engine
from perception.evaluation import DEV_ANNOTATIONS, DEV_MOT, DEV_VIDEO
from perception.evaluation.detector_eval import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, load_annotations
from perception.evaluation.sequence_eval import evaluate_sequence
from perception.replay import BUNDLED_DRIVE

INTERVALS = range(2, 9)


def configurations(base: TemporalConfig) -> list[tuple[str, PolicyConfig, TemporalConfig]]:
    adaptive = PolicyConfig(kind="adaptive")
    rows = [("full depth, every frame", PolicyConfig(kind="fixed", exit=-1), base),
            ("exit 0, every frame", PolicyConfig(kind="fixed", exit=0), base)]
    rows += [(f"keyframe every {n}", adaptive, replace(base, gate=replace(base.gate, mode="interval", interval=n)))
             for n in INTERVALS]
    rows += [("adaptive", adaptive, base),
             ("adaptive, no risk rule", adaptive, replace(base, gate=replace(base.gate, risk=False)))]
    return rows


def open_eval_detector(model: str, threads: int) -> AdaptiveDetector:
    """A detector decoding at COCO evaluation thresholds, warmed up."""
    manifest = load_manifest(model)
    detector = AdaptiveDetector(manifest, create_engine(EngineConfig(threads=threads)),
                                EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD)
    detector.warm_up(np.full((576, 768, 3), 114, np.uint8), runs=5)
    return detector


def run(model: str = str(WEIGHTS_DIR / "yolox_nano_exits.json"), threads: int = 2, only: list[str] | None = None,
        temporal: TemporalConfig | None = None, passes: int = 1) -> list[dict]:
    """Every row once for accuracy and timing, then `passes - 1` more rounds over all rows for timing
    alone, so a slow spell of this shared VM is spread over every row instead of landing on one."""
    detector = open_eval_detector(model, threads)
    annotations = load_annotations(DEV_ANNOTATIONS, detector.manifest.class_names())
    from perception.evaluation.mot import load_mot_csv

    truth = load_mot_csv(DEV_MOT)
    chosen = [c for c in configurations(temporal or TemporalConfig()) if not only or c[0] in only]
    reports = []
    for name, policy, config in chosen:
        reports.append(evaluate_sequence(name, detector, policy, config, DEV_VIDEO, annotations, truth))
        print(summary_line(reports[-1].as_dict()), flush=True)
    for _ in range(passes - 1):
        for (name, policy, config), report in zip(chosen, reports):
            report.detector_ms += evaluate_sequence(name, detector, policy, config, DEV_VIDEO, annotations).detector_ms
    rows = [report.as_dict() for report in reports]
    full = next((r for r in rows if r["name"] == "full depth, every frame"), None)
    if full is not None:
        for r in rows:
            r["time_cut_vs_full"] = round(1 - r["ms_mean"] / full["ms_mean"], 4)
            r["AP50_points_vs_full"] = round((r["AP50"] - full["AP50"]) * 100, 2)
            r["AP50:95_points_vs_full"] = round((r["AP50:95"] - full["AP50:95"]) * 100, 2)
    return rows


def drive_agreement(recording: Path, model: str = str(WEIGHTS_DIR / "yolox_nano_exits.json"), threads: int = 2,
                    policy: PolicyConfig = PolicyConfig(kind="adaptive")) -> dict:
    """`policy` against full depth on every frame of a recorded drive, as a deterministic replay
    runs them (source timeline, no deadlines): per frame, AP50 of its detections with full depth's
    as the ground truth, and the decision node's decisions on both."""
    from perception.decision import DecisionMaker, load_decision_rules
    from perception.detection.temporal import TemporalDetector
    from perception.evaluation.coco_ap import Detection, GroundTruth, evaluate
    from perception.messages import Detections
    from perception.recording import RecordingReader

    manifest = load_manifest(model)
    names = manifest.class_names()
    rules = load_decision_rules(DECISION_CONFIG)
    runs = {}
    for label, chosen in (("full", PolicyConfig(kind="fixed", exit=-1)), ("candidate", policy)):
        detector = AdaptiveDetector(manifest, create_engine(EngineConfig(threads=threads)))
        temporal = TemporalDetector(detector, chosen, TemporalConfig())
        maker = DecisionMaker(rules, names)
        frames = []
        for header, pixels in RecordingReader(recording).frames():
            outcome = temporal.process(pixels, header.media_ns)
            out = outcome.output
            message = Detections(frame_id=header.frame_id, capture_ns=0, media_ns=header.media_ns,
                                 image_width=header.width, image_height=header.height, exit_index=outcome.level,
                                 exit_count=detector.exit_count, boxes=out.boxes, scores=out.scores,
                                 class_ids=out.class_ids, track_ids=out.track_ids, velocities=out.velocities)
            decision = maker.decide(message, 0)
            frames.append((header.frame_id, out, outcome.level, decision.action.name))
        runs[label] = frames
    per_frame = []
    for (frame_id, full, _, full_action), (_, mine, level, action) in zip(runs["full"], runs["candidate"]):
        truths = [GroundTruth(1, int(c), (float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])))
                  for b, c in zip(full.boxes, full.class_ids)]
        found = [Detection(1, int(c), (float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), float(s))
                 for b, s, c in zip(mine.boxes, mine.scores, mine.class_ids)]
        ap50 = evaluate(truths, found).ap50 if truths else (1.0 if not found else 0.0)
        per_frame.append({"frame_id": frame_id, "level": level, "AP50_vs_full": round(ap50, 4),
                          "action_full": full_action, "action": action})
    levels = [f["level"] for f in per_frame]
    return {"recording": str(recording), "frames": per_frame, "frame_count": len(per_frame),
            "min_AP50_vs_full": min(f["AP50_vs_full"] for f in per_frame),
            "frames_below_0.9": sum(f["AP50_vs_full"] < 0.9 for f in per_frame),
            "decisions_identical": all(f["action"] == f["action_full"] for f in per_frame),
            "levels": {name: levels.count(level) for name, level in (("propagate", -1), ("exit0", 0), ("exit1", 1))
                       if level in levels}}


def summary_line(r: dict) -> str:
    t = r.get("tracking") or {}
    return (f"{r['name']:<26} AP50 {r['AP50']:.4f} AP50:95 {r['AP50:95']:.4f} | MOTA {t.get('mota', float('nan')):.3f} "
            f"IDF1 {t.get('idf1', float('nan')):.3f} IDsw {t.get('id_switches', '-')} | ms mean {r['ms_mean']:6.2f} "
            f"p50 {r['ms_p50']:6.2f} p99 {r['ms_p99']:6.2f} | {r['levels']}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups = (("keyframe", "tab:blue", "o", "keyframe every N (flow between)"),
              ("every frame", "tab:red", "s", "network on every frame"),
              ("adaptive", "tab:green", "*", "adaptive gate"))
    for prefix, colour, marker, label in groups:
        chosen = [r for r in rows if prefix in r["name"]]
        ax.scatter([r["ms_mean"] for r in chosen], [r["AP50"] for r in chosen], c=colour, marker=marker,
                   s=90 if marker == "*" else 40, label=label)
        for r in chosen:
            short = r["name"].replace("keyframe every ", "N=").replace(", every frame", "").replace(", no risk rule", " (no risk)")
            ax.annotate(short, (r["ms_mean"], r["AP50"]), textcoords="offset points", xytext=(5, -11), fontsize=8)
    ax.set_xlabel("mean detector time per frame (ms, CPU, flow + gate + network + tracker)")
    ax.set_ylabel("person AP50 (PETS09-S2L1 frames 1-400, every frame in order)")
    ax.set_title("YOLOX-nano over time: keyframes, exit 0 and the adaptive gate")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="perception bench-temporal", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(WEIGHTS_DIR / "yolox_nano_exits.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only the row of this name (repeatable)")
    parser.add_argument("--passes", type=int, default=1, help="timing rounds over all rows")
    parser.add_argument("--drive", nargs="?", const=BUNDLED_DRIVE, type=Path, default=None,
                        help="instead: adaptive against full depth on a recorded drive, frame by frame")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if args.drive is not None:
        result = drive_agreement(args.drive, args.model, args.threads)
        print(json.dumps({k: v for k, v in result.items() if k != "frames"}))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    rows = run(args.model, args.threads, args.only, passes=args.passes)
    for row in rows:
        print(summary_line(row))
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "temporal", "video": DEV_VIDEO.name, "threads": args.threads,
                                         "results": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    return 0
