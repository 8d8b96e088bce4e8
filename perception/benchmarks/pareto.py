"""Accuracy against detector time: the fixed configurations' frontier, and the adaptive policies on it.

    perception pareto [--video V --annotations A [--mot M]] [--pixels 43264,86528,173056] [--exits 0,1]
                      [--intervals 1,2,3,4,6] [--passes 2] [--json F] [--plot F.png] [--detector KEY=VALUE]...
    perception pareto --drive RECORDING [--policy adaptive]   # a policy against full depth on a drive, frame by frame

Fixed configurations: every pixel budget x exit x keyframe interval (the network every N frames at
that budget and exit, the tracks moved by optical flow in between; N = 1 is the network on every
frame). The adaptive policy is run as configured (configs/detector.yaml, with --detector overrides)
and without its ego-path rule. Every frame of the clip goes through the detector in order
(perception.evaluation.sequence_eval); each row reports AP50, AP50:95 and the detector's mean time
per frame, timed over `passes` rounds over all rows (a slow spell of a shared machine is spread
over every row). For each adaptive row: the best AP50 (and AP50:95) of the fixed configurations
that cost no more, and its margin over them; its time and accuracy against fixed full depth at the
default pixel budget. Default clip: PETS09-S2L1 frames 1-400 (recordings/); frames 401-795 are
withheld from this project on purpose.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from perception import REPO
from perception.config import ConfigError, parse_override
from perception.detection.builder import DetectorSettings, build_detector, build_network, check_settings, load_settings
from perception.detection.manifest import load_manifest
from perception.detection.policies import REGISTRY
from perception.evaluation import DEV_ANNOTATIONS, DEV_MOT, DEV_VIDEO
from perception.evaluation.detector_eval import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, load_annotations
from perception.evaluation.sequence_eval import evaluate_sequence
from perception.latency import now_ns

if TYPE_CHECKING:  # for annotations only: the decision maker and messages load with the drive tools
    from perception.decision import DecisionMaker, DecisionRules
    from perception.detection.network import StagedNetwork
    from perception.detection.outputs import Outcome
    from perception.messages import Decision, FrameHeader

DETECTOR_CONFIG = REPO / "configs" / "detector.yaml"
PIXELS = (43264, 86528, 173056)  # 208x208, ~294x294, 416x416
EXITS = (0, 1)
INTERVALS = (1, 2, 3, 4, 6)


def detector_settings(overrides: list[str] = ()) -> DetectorSettings:
    """The shipped detector config (configs/detector.yaml) with `KEY=VALUE` overrides, as settings."""
    return load_settings(DETECTOR_CONFIG, overrides)


def fixed_rows(base: DetectorSettings, pixels: tuple[int, ...], exits: tuple[int, ...],
               intervals: tuple[int, ...]) -> list[tuple[str, DetectorSettings]]:
    """Every budget x exit x interval, each checked as a config is (ConfigError, one line naming the
    value), named by the exit it runs (-1: the model's deepest, by its index)."""
    exit_count = len(load_manifest(base.model).exits)
    rows = []
    for budget in pixels:
        for exit_index in exits:
            for interval in intervals:
                try:
                    policy = replace(base.policy, kind="interval" if interval > 1 else "fixed", exit=exit_index,
                                     interval=interval)
                    settings = replace(base, pixels=budget, policy=policy)
                except ValueError as exc:
                    raise ConfigError(f"--pixels {budget} / --exits {exit_index} / --intervals {interval}: {exc}") from None
                check_settings(settings)
                name = f"fixed {budget} px exit{exit_index % exit_count} every {interval}"
                if name not in (row[0] for row in rows):  # -1 and the deepest's index are one row
                    rows.append((name, settings))
    return rows


def adaptive_rows(base: DetectorSettings) -> list[tuple[str, DetectorSettings]]:
    """The adaptive policy as configured, without its ego-path rule (a static camera), and at full size only."""
    adaptive = replace(base, policy=replace(base.policy, kind="adaptive"))
    full_size_only = replace(adaptive.policy, sizes=[1.0])
    return [("adaptive", adaptive), ("adaptive, no ego path", replace(adaptive, risk=replace(adaptive.risk, ego_path=False))),
            ("adaptive, full size only", replace(adaptive, policy=full_size_only))]


def run(rows: list[tuple[str, DetectorSettings]], video: Path, annotations_path: Path, mot: Path | None,
        passes: int = 1, max_frames: int | None = None) -> list[dict]:
    """Every row once for accuracy and timing, then `passes - 1` more rounds over all rows for timing alone."""
    network = build_network(rows[0][1], EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD, warm_up=())
    annotations = load_annotations(annotations_path, network.manifest.class_names())
    truth = None
    if mot is not None:
        from perception.evaluation.mot import load_mot_csv

        truth = load_mot_csv(mot)
    reports = []
    for name, settings in rows:
        network.pixels = settings.pixels or network.manifest.input.default_pixels
        report = evaluate_sequence(name, build_detector(settings, network=network), video, annotations, truth,
                                   max_frames=max_frames)
        reports.append(report)
        print(summary_line(report.as_dict()), flush=True)
    for _ in range(passes - 1):
        for (name, settings), report in zip(rows, reports):
            network.pixels = settings.pixels or network.manifest.input.default_pixels
            report.detector_ms += evaluate_sequence(name, build_detector(settings, network=network), video, annotations,
                                                    max_frames=max_frames).detector_ms
    return [{**report.as_dict(), "pixels": settings.pixels, "policy": settings.policy.kind}
            for report, (_, settings) in zip(reports, rows)]


def compare(rows: list[dict], full_depth: str) -> list[dict]:
    """Each non-fixed row against the fixed frontier at its own cost and against fixed full depth."""
    fixed = [r for r in rows if r["name"].startswith("fixed")]
    full = next((r for r in rows if r["name"] == full_depth), None)
    out = []
    for row in rows:
        if row["name"].startswith("fixed"):
            continue
        cheaper = [f for f in fixed if f["ms_mean"] <= row["ms_mean"]]
        best50 = max((f["AP50"] for f in cheaper), default=None)
        best = max((f["AP50:95"] for f in cheaper), default=None)
        entry = {"name": row["name"], "ms_mean": row["ms_mean"], "AP50": row["AP50"], "AP50:95": row["AP50:95"],
                 "frontier_AP50_at_its_cost": best50, "AP50_points_above_frontier":
                 None if best50 is None else round((row["AP50"] - best50) * 100, 2),
                 "frontier_AP50:95_at_its_cost": best, "AP50:95_points_above_frontier":
                 None if best is None else round((row["AP50:95"] - best) * 100, 2)}
        if full is not None:
            entry |= {"time_vs_full_depth": round(row["ms_mean"] / full["ms_mean"], 3),
                      "AP50_points_vs_full_depth": round((row["AP50"] - full["AP50"]) * 100, 2),
                      "AP50:95_points_vs_full_depth": round((row["AP50:95"] - full["AP50:95"]) * 100, 2)}
        out.append(entry)
    return out


def frontier(rows: list[dict], key: str = "AP50") -> list[dict]:
    """Fixed rows no other fixed row beats on both mean time (lower) and `key` (higher), cheapest first."""
    fixed = [r for r in rows if r["name"].startswith("fixed")]
    kept = [r for r in fixed if not any(o["ms_mean"] <= r["ms_mean"] and o[key] >= r[key] and
                                        (o["ms_mean"], o[key]) != (r["ms_mean"], r[key]) for o in fixed)]
    return sorted(kept, key=lambda r: r["ms_mean"])


def drive_rules(network: StagedNetwork) -> tuple[DecisionRules, list[str]]:
    """configs/decision.yaml's rules and the class names they judge `network`'s detections by."""
    from perception.decision import load_rules
    from perception.detection.classes import detections_class_names

    rules, classes_file = load_rules(REPO / "configs" / "decision.yaml")
    return rules, detections_class_names(network.manifest.class_names(), classes_file)


def decide_frame(maker: DecisionMaker, header: FrameHeader, outcome: Outcome, exit_count: int) -> Decision:
    """The decision node's decision on one frame's outcome, as a deterministic replay makes it: on
    the drive's own timeline, without the hops' stamps."""
    from perception.detection.outputs import detections_message

    message = detections_message(outcome, frame_id=header.frame_id, capture_ns=0, media_ns=header.media_ns,
                                 image_width=header.width, image_height=header.height, exit_count=exit_count,
                                 stamps=(), received_ns=None, done_ns=now_ns())
    return maker.decide(message, now_ns())


def drive_agreement(recording: Path, base: DetectorSettings) -> dict:
    """`base`'s policy against fixed full depth on every frame of a recorded drive, as a deterministic
    replay runs them (the drive's timeline, no deadline): per frame, AP50 of its detections with full
    depth's as the ground truth, and the decision node's decisions on both (configs/decision.yaml)."""
    from perception.decision import decision_maker
    from perception.evaluation.coco_ap import Detection, GroundTruth, evaluate
    from perception.recording_reader import RecordingReader

    network = build_network(base, warm_up=())
    rules, class_names = drive_rules(network)
    runs = {}
    for label, settings in (("full", replace(base, policy=replace(base.policy, kind="fixed", exit=-1))), ("policy", base)):
        detector, maker, frames = build_detector(settings, network=network), decision_maker(rules, class_names), []
        for header, pixels in RecordingReader(recording).frames():
            outcome = detector.process(pixels, header.media_ns)
            frames.append((header.frame_id, outcome, decide_frame(maker, header, outcome, network.exit_count).action.name))
        runs[label] = frames
    per_frame = []
    for (frame_id, full, full_action), (_, mine, action) in zip(runs["full"], runs["policy"]):
        xywh = [(float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])) for b in full.output.boxes]
        truths = [GroundTruth(1, int(c), box) for box, c in zip(xywh, full.output.class_ids)]
        found = [Detection(1, int(c), (float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), float(s))
                 for b, s, c in zip(mine.output.boxes, mine.output.scores, mine.output.class_ids)]
        ap50 = evaluate(truths, found).ap50 if truths else (1.0 if not found else 0.0)
        per_frame.append({"frame_id": frame_id, "level": mine.level, "input": mine.input_size, "why": mine.why,
                          "AP50_vs_full": round(ap50, 4), "action_full": full_action, "action": action})
    return {"recording": str(recording), "policy": base.policy.kind, "frames": per_frame, "frame_count": len(per_frame),
            "network_frames": sum(f["level"] >= 0 for f in per_frame),
            "min_AP50_vs_full": min(f["AP50_vs_full"] for f in per_frame),
            "frames_below_0.9": sum(f["AP50_vs_full"] < 0.9 for f in per_frame),
            "decisions_identical": all(f["action"] == f["action_full"] for f in per_frame)}


def summary_line(r: dict) -> str:
    t = r.get("tracking") or {}
    return (f"{r['name']:<34} AP50 {r['AP50']:.4f} AP50:95 {r['AP50:95']:.4f} | MOTA {t.get('mota', float('nan')):.3f} "
            f"IDF1 {t.get('idf1', float('nan')):.3f} | ms mean {r['ms_mean']:6.2f} p99 {r['ms_p99']:6.2f} | "
            f"{r['levels']} {r.get('sizes', {})}")


def plot(rows: list[dict], path: Path, title: str, deepest_exit: int) -> None:
    """AP50 and AP50:95 against time: fixed rows by budget (o: `deepest_exit`, the model's full depth;
    ^: a shallower exit), the fixed frontier, the adaptive rows as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    budgets = sorted({r["pixels"] for r in rows if r["name"].startswith("fixed")})
    colours = {budget: f"C{index % 10}" for index, budget in enumerate(budgets)}  # matplotlib's cycle
    for ax, key in zip(axes, ("AP50", "AP50:95")):
        for r in rows:
            if r["name"].startswith("fixed"):
                interval = r["name"].rsplit(" ", 1)[1]
                ax.scatter(r["ms_mean"], r[key], c=colours[r["pixels"]], marker="o" if f" exit{deepest_exit} " in r["name"] else "^", s=28)
                ax.annotate(interval, (r["ms_mean"], r[key]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        front = frontier(rows, key)
        ax.plot([r["ms_mean"] for r in front], [r[key] for r in front], "k--", lw=1, label="fixed frontier")
        for r in rows:
            if not r["name"].startswith("fixed"):
                ax.scatter(r["ms_mean"], r[key], c="tab:green", marker="*", s=160)
                ax.annotate(r["name"], (r["ms_mean"], r[key]), textcoords="offset points", xytext=(6, -10), fontsize=8)
        for budget, colour in colours.items():
            ax.scatter([], [], c=colour, label=f"{budget} px (o full depth, ^ a shallower exit; label: every N)")
        ax.set_xlabel("mean detector time per frame (ms, CPU: flow, network, tracker)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of frames, 1 or more, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=None, help="default: PETS09-S2L1 frames 1-400 (recordings/)")
    parser.add_argument("--annotations", type=Path, default=None, help="COCO json with frame indices")
    parser.add_argument("--mot", type=Path, default=None, help="MOT csv ground truth, for MOTA / IDF1")
    parser.add_argument("--name", default=None, help="the clip's name in the plot's title")
    parser.add_argument("--pixels", type=_ints, default=PIXELS, help="input pixel budgets, comma-separated")
    parser.add_argument("--exits", type=_ints, default=EXITS, help="exits, comma-separated")
    parser.add_argument("--intervals", type=_ints, default=INTERVALS, help="keyframe intervals, comma-separated")
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a key of configs/detector.yaml for every row, e.g. engine.threads=1")
    parser.add_argument("--passes", type=int, default=1, help="timing rounds over all rows")
    parser.add_argument("--max-frames", type=_positive, default=None, help="only the clip's first frames")
    parser.add_argument("--only-adaptive", action="store_true", help="skip the fixed grid")
    parser.add_argument("--drive", type=Path, default=None, metavar="RECORDING",
                        help="instead: the configured policy (--policy to choose) against full depth on a recorded "
                             "drive, frame by frame: agreement of detections and of the decision node's decisions")
    parser.add_argument("--policy", default=None, choices=sorted(REGISTRY),
                        help="with --drive: the policy kind (default: configs/detector.yaml's)")
    parser.add_argument("--json", type=Path, help="write every configuration's figures here")
    parser.add_argument("--plot", type=Path, help="the frontier as a PNG")
    args = parser.parse_args(argv)
    if (args.video is None) != (args.annotations is None):
        parser.error("--video and --annotations go together")
    for item in args.detector:
        parse_override(item, "--detector")
    base = detector_settings(args.detector)
    if args.drive is not None:
        if args.policy:
            base = replace(base, policy=replace(base.policy, kind=args.policy))
        result = drive_agreement(args.drive, base)
        print(json.dumps({k: v for k, v in result.items() if k != "frames"}))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    manifest = load_manifest(base.model)
    default_pixels = base.pixels or manifest.input.default_pixels
    rows = [] if args.only_adaptive else fixed_rows(base, args.pixels, args.exits, args.intervals)
    rows += adaptive_rows(base)
    video = args.video or DEV_VIDEO
    mot = args.mot or (DEV_MOT if args.video is None else None)
    results = run(rows, video, args.annotations or DEV_ANNOTATIONS, mot, args.passes, args.max_frames)
    deepest_exit = len(manifest.exits) - 1
    full_name = f"fixed {default_pixels} px exit{deepest_exit} every 1"
    comparison = compare(results, full_name)
    for entry in comparison:
        print(json.dumps(entry))
    name = args.name or (video.parent.name if args.video else "PETS09-S2L1 frames 1-400")
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "pareto", "video": str(video), "passes": args.passes,
                                         "results": results, "frontier_AP50": [r["name"] for r in frontier(results)],
                                         "adaptive": comparison}, indent=2))
    if args.plot:
        plot(results, args.plot, f"{name}: accuracy against detector time (YOLOX-nano, CPU)", deepest_exit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
