"""Adaptive depth over time: accuracy against detector time for keyframe intervals, the shallow
exit and the adaptive gate, on the development clip (PETS09-S2L1 frames 1-400), every frame in order.

    perception bench-temporal [--json F] [--plot F.png] [--only NAME ...]

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

from perception import REPO
from perception.detection.adaptive import AdaptiveDetector
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.detection.policy import PolicyConfig
from perception.detection.temporal import GateConfig, TemporalConfig
from perception.engines import EngineConfig, create_engine
from perception.evaluation.detector_eval import EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD, load_annotations
from perception.evaluation.sequence_eval import evaluate_sequence

DEV_VIDEO = REPO / "recordings" / "pets09_vtest_dev.avi"
DEV_ANNOTATIONS = REPO / "recordings" / "pets09_dev_person.json"
DEV_MOT = REPO / "recordings" / "pets09_dev_gt.txt"
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
        temporal: TemporalConfig | None = None) -> list[dict]:
    detector = open_eval_detector(model, threads)
    annotations = load_annotations(DEV_ANNOTATIONS, detector.manifest.class_names())
    from perception.evaluation.mot import load_mot_csv

    truth = load_mot_csv(DEV_MOT)
    rows = []
    for name, policy, config in configurations(temporal or TemporalConfig()):
        if only and name not in only:
            continue
        report = evaluate_sequence(name, detector, policy, config, DEV_VIDEO, annotations, truth)
        rows.append(report.as_dict())
        print(summary_line(rows[-1]), flush=True)
    full = next((r for r in rows if r["name"] == "full depth, every frame"), None)
    if full is not None:
        for r in rows:
            r["time_cut_vs_full"] = round(1 - r["ms_mean"] / full["ms_mean"], 4)
            r["AP50_points_vs_full"] = round((r["AP50"] - full["AP50"]) * 100, 2)
            r["AP50:95_points_vs_full"] = round((r["AP50:95"] - full["AP50:95"]) * 100, 2)
    return rows


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
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    rows = run(args.model, args.threads, args.only)
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "temporal", "video": DEV_VIDEO.name, "threads": args.threads,
                                         "results": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    return 0
