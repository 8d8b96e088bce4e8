"""`perception bench`: the latency test harness of the whole pipeline (docs/REPORT.md): a recording or a
synthetic source at a chosen rate and CPU load, the per-stage and end-to-end report, and with
`--baseline` the ratio to the same work in a single process."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

from perception.config import command_line_overrides
from perception.detection.builder import DetectorSettings
from perception.pipeline import BUNDLED_DRIVE, PIPELINE_LAUNCH, count_recorded_frames, pipeline_launch, run_pipeline
from perception.pipeline import with_live_view
from perception.replay import EXIT_BAD_INPUT
from perception.visualization import add_foxglove_argument
from perception.report import build_report, format_report, write_outputs


def bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception bench", description="latency test harness of the whole pipeline")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--recording", type=Path, help="a recorded drive (default: the bundled one)")
    source.add_argument("--synthetic", metavar="WxH", help="a synthetic pattern of this size instead")
    parser.add_argument("--rate", type=float, default=None, help="frames per second (default: recorded rate; synthetic 30)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of synthetic frames")
    parser.add_argument("--loops", type=int, default=1, help="play a recording this many times")
    parser.add_argument("--load", type=int, default=0, help="extra busy-looping processes competing for the CPU")
    from perception.detection.policies import REGISTRY

    parser.add_argument("--policy", choices=sorted(REGISTRY), default=None,
                        help="the detector's policy for this run (default: configs/detector.yaml's)")
    parser.add_argument("--budget-ms", type=float, default=100.0,
                        help="capture-to-decision budget every frame is held to (default 100)")
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a detector config key for this run, e.g. engine.threads=1 (repeatable)")
    parser.add_argument("--json", type=Path, help="write the latency report (docs/REPORT.md) here")
    parser.add_argument("--plots", type=Path, help="write latency plots (PNG) into this folder")
    parser.add_argument("--baseline", action="store_true",
                        help="then run the same source in one plain process (read, full YOLOX-nano, decode, decide) "
                             "and print the pipeline's end-to-end p50/p99 as a ratio of it")
    add_foxglove_argument(parser)
    args = parser.parse_args(argv)
    from perception.benchmarks.watchdog import burn_cpu

    detector = {"policy.kind": args.policy} if args.policy else {}
    detector.update(command_line_overrides(args.detector, "--detector", DetectorSettings))
    if args.synthetic:
        try:
            width, height = (int(v) for v in args.synthetic.lower().split("x"))
        except ValueError:
            parser.error(f"--synthetic takes WIDTHxHEIGHT, e.g. 1280x720, got {args.synthetic!r}")
        rate = args.rate or 30.0
        frames = int(rate * args.duration)
        source = {"kind": "synthetic", "width": width, "height": height, "fps": rate, "count": frames}
        title = f"bench synthetic {width}x{height} at {rate:g} Hz"
    else:
        recording = args.recording or BUNDLED_DRIVE
        frames = count_recorded_frames(recording) * args.loops
        source = {"kind": "recording", "path": str(recording.resolve()), "loop": args.loops > 1}
        rate = args.rate or "source"
        title = f"bench {recording.name}" + (f" at {rate:g} Hz" if args.rate else " at recorded rate")
    title += f", load {args.load}" + "".join(f", {k} {v}" for k, v in detector.items())
    spec = pipeline_launch(source, rate=rate, budget_ms=args.budget_ms, detector_params=detector, max_frames=frames)
    spec = with_live_view(spec, args.foxglove, "bench")
    if spec is None:
        return EXIT_BAD_INPUT
    stop = mp.Event()
    burners = [mp.Process(target=burn_cpu, args=(stop,), daemon=True) for _ in range(args.load)]
    for burner in burners:
        burner.start()
    baseline = None
    try:
        result = run_pipeline(spec, title, frames)
        report = build_report(result.collected, args.budget_ms, title=title)
        print(format_report(report))
        if args.baseline:
            from perception.benchmarks.baseline import format_comparison, ratios, run_baseline

            # Same spec, so the same source, rate, frame count, engine settings and (still running) load.
            print("running the single-process baseline on the same source...", file=sys.stderr, flush=True)
            baseline = run_baseline(spec, str(PIPELINE_LAUNCH), title=f"{title}; single process, YOLOX-nano full depth")
    finally:
        stop.set()
        for burner in burners:
            burner.join(2)
    if baseline is not None:
        ratio = ratios(report, baseline)
        print(format_report(baseline))
        print(format_comparison(report, baseline, ratio))
        report["baseline"] = {**baseline, "ratio": ratio}
    for path in write_outputs(report, args.json, args.plots):
        print(f"wrote {path}")
    if baseline is not None and args.plots:
        for path in write_outputs(baseline, None, args.plots / "baseline"):
            print(f"wrote {path}")
    return result.exit_code
