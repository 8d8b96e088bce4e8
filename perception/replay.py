"""Record drives, replay them through the full pipeline, compare runs, and benchmark the pipeline.

    perception record OUTPUT.mcap --source VIDEO|IMAGE_DIR|RECORDING | --camera N  [--frames N]
    perception replay RECORDING [--speed 1.0|max] [--save D.jsonl] [--compare REF.jsonl] [--json R] [--plots DIR]
    perception bench [--recording R | --synthetic 1280x720] [--rate HZ] [--duration S] [--load N] [--json R] [--plots DIR]

Every run is the real pipeline (capture -> detector -> decision -> watchdog, and a recorder when
recording) as processes under the launcher, built from the configs in configs/. `--speed max`
replays deterministically: the capture node sends the next frame only after a decision about the
previous one, and the detector ignores wall-clock deadlines, so the same recording and config give
the same decisions and exits run after run; `--compare` checks that against a saved reference,
like openpilot's process replay.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from perception.config import ConfigError, parse_override
from perception.launch import LaunchFile, LaunchNode, Launcher
from perception.report import Collected, Collector, build_report, format_report, write_outputs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
PIPELINE = ("capture", "detector", "decision", "watchdog")
EXIT_DIFFERENT = 1


@dataclass
class RunResult:
    collected: Collected
    exit_code: int
    seconds: float


def pipeline_launch(source: dict, *, rate: object = "source", speed: float = 1.0, deterministic: bool = False,
                    budget_ms: float = 100.0, record_to: Path | None = None, pipeline: bool = True,
                    detector_params: dict | None = None, max_frames: int | None = None,
                    recorder_params: dict | None = None) -> LaunchFile:
    """The launch spec of a run: capture from `source`, then the pipeline and/or a recorder."""
    consumers = (2 if pipeline else 0) + (1 if record_to else 0)  # detector + watchdog, recorder
    capture = {**{f"source.{k}": v for k, v in source.items()}, "rate": rate, "speed": speed,
               "wait_for_subscribers": consumers, "wait_timeout_s": 60.0, "max_frames": max_frames}
    if pipeline:  # frames captured while the pipeline is still starting would be measured as misses
        capture["wait_for_nodes"] = ["detector", "decision", "watchdog"]
    if deterministic:
        capture["lockstep_from"] = ["decision"]
    nodes = [LaunchNode(name="capture", node="capture", config=CONFIGS / "capture_replay.yaml", params=capture,
                        restart="never", shutdown_on_exit=True)]
    if pipeline:
        detector = {"deterministic": deterministic, **(detector_params or {})}
        decision = {"budget_ms": 1e9} if deterministic else {}  # lockstep: nothing is ever stale
        nodes += [
            LaunchNode(name="detector", node="detector", config=CONFIGS / "detector.yaml", params=detector),
            LaunchNode(name="decision", node="decision", config=CONFIGS / "decision.yaml", params=decision),
            LaunchNode(name="watchdog", node="watchdog", config=CONFIGS / "watchdog.yaml"),
        ]
    if record_to:
        sources = None if pipeline else {"frames": ["capture"], "heartbeat": ["capture"]}
        params = {"output": str(Path(record_to).resolve()), **({"sources": sources} if sources else {}),
                  **(recorder_params or {})}
        nodes.append(LaunchNode(name="recorder", node="recorder", config=CONFIGS / "recorder.yaml", params=params))
    # budget_ms set here applies to every node; the deterministic decision override above comes after it.
    return LaunchFile(nodes=nodes, status_period_s=3600.0, drain_s=2.0, budget_ms=budget_ms)


def run_pipeline(spec: LaunchFile, name: str, expected_decisions: int | None, collect: bool = True,
                 progress: bool = True) -> RunResult:
    launcher = Launcher(spec, name)
    collector = Collector(launcher.run_dir) if collect else None
    stop_progress = threading.Event()
    if progress and collector is not None:
        threading.Thread(target=_progress, args=(collector, expected_decisions, stop_progress), daemon=True).start()
    started = time.monotonic()
    try:
        code = launcher.run()
    finally:
        stop_progress.set()
        collected = collector.close() if collector else Collected()
    return RunResult(collected, code, time.monotonic() - started)


def _progress(collector: Collector, total: int | None, stop: threading.Event) -> None:
    """A progress bar on stderr: decisions made so far (of the frames expected)."""
    tty = sys.stderr.isatty()
    last_printed = -1
    while not stop.wait(0.25 if tty else 2.0):
        done = collector.decision_count()
        if total:
            filled = int(30 * min(done, total) / total)
            line = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} frames decided"
        else:
            line = f"{done} frames decided"
        if tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif done != last_printed:
            print(line, file=sys.stderr, flush=True)
        last_printed = done
    if tty:
        print(file=sys.stderr)


def count_recorded_frames(path: Path) -> int:
    from perception.recording import RecordingReader

    return sum(1 for channel, _, _ in RecordingReader(path).records() if channel == "/frames")


# -- compare ------------------------------------------------------------------------------


def decision_rows(collected: Collected) -> list[dict]:
    """One line per frame decided by the decision node, with the detections it was based on."""
    detections = {d.frame_id: d for d in collected.detections}
    rows = []
    for _, decision in sorted(((t, d) for t, d in collected.decisions if d.decided_by != "watchdog"),
                              key=lambda item: item[1].frame_id):
        det = detections.get(decision.frame_id)
        rows.append({
            "frame_id": decision.frame_id, "action": decision.action.name, "reason": decision.reason.name,
            "target_class": decision.target.class_id if decision.target else None,
            "exit": det.exit_index if det else None,
            "detections": [[int(c), round(float(s), 4), *[round(float(v), 1) for v in b]]
                           for b, s, c in zip(det.boxes, det.scores, det.class_ids)] if det else None,
        })
    return rows


def compare_rows(reference: list[dict], current: list[dict], box_tolerance_px: float = 2.0,
                 score_tolerance: float = 0.02) -> list[str]:
    """Differences, one line each. Actions, reasons, targets and exits must be equal; boxes and
    scores may differ by float noise between CPUs (the tolerances), not more."""
    ref = {row["frame_id"]: row for row in reference}
    cur = {row["frame_id"]: row for row in current}
    differences = []
    for frame_id in sorted(ref.keys() | cur.keys()):
        a, b = ref.get(frame_id), cur.get(frame_id)
        if a is None or b is None:
            differences.append(f"frame {frame_id}: {'missing in reference' if a is None else 'no decision in this run'}")
            continue
        for key in ("action", "reason", "target_class", "exit"):
            if a[key] != b[key]:
                differences.append(f"frame {frame_id}: {key} {a[key]} -> {b[key]}")
        if a["detections"] is not None and b["detections"] is not None:
            if len(a["detections"]) != len(b["detections"]):
                differences.append(f"frame {frame_id}: {len(a['detections'])} -> {len(b['detections'])} detections")
                continue
            for da, db in zip(sorted(a["detections"]), sorted(b["detections"])):
                if da[0] != db[0] or abs(da[1] - db[1]) > score_tolerance or \
                        max(abs(x - y) for x, y in zip(da[2:], db[2:])) > box_tolerance_px:
                    differences.append(f"frame {frame_id}: detection {da} -> {db}")
    return differences


def load_rows(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"{path}: reference not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: not JSON") from None


# -- commands -----------------------------------------------------------------------------


def replay_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception replay", description="replay a recorded drive through the pipeline")
    parser.add_argument("recording", type=Path)
    parser.add_argument("--speed", default="1.0", help="a factor of recorded time, or 'max' (deterministic)")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--save", type=Path, help="write this run's decisions (JSON lines) here")
    parser.add_argument("--compare", type=Path, help="a reference saved with --save: print the differences")
    parser.add_argument("--json", type=Path, help="write the latency report (docs/REPORT.md) here")
    parser.add_argument("--plots", type=Path, help="write latency plots (PNG) into this folder")
    args = parser.parse_args(argv)
    deterministic = args.speed == "max"
    try:
        speed = 1.0 if deterministic else float(args.speed)
        frames = count_recorded_frames(args.recording)
    except ValueError:
        parser.error(f"--speed must be a number or 'max', got {args.speed!r}")
    except Exception as exc:  # RecordingError and friends: one line naming the file
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    spec = pipeline_launch({"kind": "recording", "path": str(args.recording.resolve())}, rate="max" if deterministic else "source",
                           speed=speed, deterministic=deterministic, budget_ms=args.budget_ms)
    result = run_pipeline(spec, f"replay of {args.recording}", frames)
    report = build_report(result.collected, args.budget_ms, title=f"replay {args.recording.name} "
                          f"({'deterministic, max speed' if deterministic else f'x{speed:g} recorded time'})")
    print(format_report(report))
    write_outputs(report, args.json, args.plots)
    rows = decision_rows(result.collected)
    if args.save:
        args.save.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"saved {len(rows)} decisions to {args.save}")
    if args.compare:
        differences = compare_rows(load_rows(args.compare), rows)
        for line in differences[:50]:
            print(line)
        print(f"compare with {args.compare}: {len(differences)} difference(s) over {len(rows)} frames")
        if differences:
            return EXIT_DIFFERENT
    return result.exit_code


def record_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception record", description="record a drive (every topic) to MCAP")
    parser.add_argument("output", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", type=Path, help="a video file, image folder or recording")
    source.add_argument("--camera", type=int, help="an OpenCV camera index")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--frames-only", action="store_true", help="record the camera alone, without the pipeline")
    parser.add_argument("--image-format", choices=["jpeg", "raw"], default=None, help="default: configs/recorder.yaml")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="1-100; default: configs/recorder.yaml")
    args = parser.parse_args(argv)
    recorder_params = {key: value for key, value in
                       (("image_format", args.image_format), ("jpeg_quality", args.jpeg_quality)) if value is not None}
    if args.camera is not None:
        spec_source: dict = {"kind": "camera", "camera_index": args.camera}
    elif args.source.is_dir():
        spec_source = {"kind": "images", "path": str(args.source.resolve()), "fps": 10.0}
    else:
        kind = "recording" if args.source.suffix == ".mcap" else "video"
        spec_source = {"kind": kind, "path": str(args.source.resolve())}
    spec = pipeline_launch(spec_source, record_to=args.output, pipeline=not args.frames_only, max_frames=args.frames,
                           recorder_params=recorder_params)
    result = run_pipeline(spec, f"record {args.output}", args.frames, collect=not args.frames_only, progress=False)
    print(f"recorded {args.output} in {result.seconds:.1f} s")
    return result.exit_code


def _burn(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def bench_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception bench", description="latency test harness of the whole pipeline")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--recording", type=Path, help="a recorded drive (default: the bundled one)")
    source.add_argument("--synthetic", metavar="WxH", help="a synthetic pattern of this size instead")
    parser.add_argument("--rate", type=float, default=None, help="frames per second (default: recorded rate; synthetic 30)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of synthetic frames")
    parser.add_argument("--loops", type=int, default=1, help="play a recording this many times")
    parser.add_argument("--load", type=int, default=0, help="extra busy-looping processes competing for the CPU")
    parser.add_argument("--policy", choices=["fixed", "confidence", "deadline"], default=None)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a detector config key for this run, e.g. engine.threads=1 (repeatable)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path)
    args = parser.parse_args(argv)
    detector = {"policy.kind": args.policy} if args.policy else {}
    detector.update(parse_override(item, "--detector") for item in args.detector)
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
        recording = args.recording or REPO / "recordings" / "udacity_dashcam.mcap"
        frames = count_recorded_frames(recording) * args.loops
        source = {"kind": "recording", "path": str(recording.resolve()), "loop": args.loops > 1}
        rate = args.rate or "source"
        title = f"bench {recording.name}" + (f" at {rate:g} Hz" if args.rate else " at recorded rate")
    title += f", load {args.load}" + "".join(f", {k} {v}" for k, v in detector.items())
    spec = pipeline_launch(source, rate=rate, budget_ms=args.budget_ms, detector_params=detector, max_frames=frames)
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for burner in burners:
        burner.start()
    try:
        result = run_pipeline(spec, title, frames)
    finally:
        stop.set()
        for burner in burners:
            burner.join(2)
    report = build_report(result.collected, args.budget_ms, title=title)
    print(format_report(report))
    for path in write_outputs(report, args.json, args.plots):
        print(f"wrote {path}")
    return result.exit_code
