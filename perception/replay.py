"""Record drives, replay them through the full pipeline, compare runs, and benchmark the pipeline.

    perception record OUTPUT.mcap --source VIDEO|IMAGE_DIR|RECORDING | --camera N  [--frames N]
    perception replay RECORDING [--speed 1.0|max] [--decision KEY=VALUE]... [--save D.jsonl] [--compare REF.jsonl]
                      [--json R] [--plots DIR] [--foxglove [PORT]]
    perception bench [--recording R | --synthetic 1280x720] [--rate HZ] [--duration S] [--load N] [--json R] [--plots DIR]
                     [--baseline] [--foxglove [PORT]]

Every run is the real pipeline (capture -> detector -> decision -> watchdog, and a recorder when
recording) as processes under the launcher, as launch/replay.yaml defines it. `--speed max`
replays deterministically: the capture node sends the next frame only after a decision about the
previous one, and the detector ignores wall-clock deadlines, so the same recording and config give
the same decisions and exits run after run; `--compare` checks that against a saved reference,
like openpilot's process replay. `record` opens its source and checks its output folder (writable,
`min_free_mb` free) before starting anything (a bad one is one line, exit 2), ends the run when the
recorder cannot go on (out of space), and never leaves an empty file or reports a failed run as
recorded. `--foxglove` adds the live view (nodes/viewer.py, docs/LIVE_VIEW.md) to a replay or a bench.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import shutil
import sys
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from perception.config import ConfigError, from_mapping, parse_override
from perception.launch import LaunchFile, LaunchNode, Launcher, load_launch_file, resolve_node_config
from perception.node import EXIT_OUTPUT
from perception.topics import FRAMES, HEARTBEAT, MONITORED
from perception.report import Collected, Collector, build_report, format_report, write_outputs
from perception.visualization import add_foxglove_argument, with_viewer
from perception import REPO

# The pipeline is defined once, in this launch file; replay, bench and record adjust its capture
# source and add a recorder, they do not list the nodes again.
PIPELINE_LAUNCH = REPO / "launch" / "replay.yaml"
RECORDER_CONFIG = REPO / "configs" / "recorder.yaml"
BUNDLED_DRIVE = REPO / "recordings" / "udacity_dashcam.mcap"
EXIT_DIFFERENT = 1
EXIT_BAD_INPUT = 2
PROGRESS_LOG_INTERVAL_S = 5.0  # progress lines in a log that is not a terminal


@dataclass
class RunResult:
    collected: Collected
    exit_code: int
    seconds: float
    failed: dict[str, int] = field(default_factory=dict)  # name -> exit code of every node that failed for good


def pipeline_launch(source: dict, *, rate: object = "source", speed: float = 1.0, deterministic: bool = False,
                    budget_ms: float = 100.0, record_to: Path | None = None, pipeline: bool = True,
                    detector_params: dict | None = None, decision_params: dict | None = None,
                    max_frames: int | None = None, recorder_params: dict | None = None) -> LaunchFile:
    """The launch spec of a run: launch/replay.yaml with its capture reading `source`, and/or a recorder.

    Differences from `perception launch launch/replay.yaml`, all on purpose: the capture node is never
    restarted (a restarted capture would play the source again from its first frame, under the same
    frame ids, and a replay would compare or record that twice); no status table (the harness shows
    its own progress and report); a longer drain, so the last decisions of a loaded run still count."""
    launch = load_launch_file(PIPELINE_LAUNCH)
    capture_node = next(n for n in launch.nodes if n.name == "capture")
    downstream = [n for n in launch.nodes if n.name != "capture"] if pipeline else []
    capture = {key: value for key, value in capture_node.params.items() if pipeline or key != "wait_for_nodes"}
    # Subscribers to wait for before the first frame: the pipeline's frame consumers as the capture
    # config counts them, plus the recorder.
    consumers = resolve_node_config(capture_node, str(PIPELINE_LAUNCH))[1].wait_for_subscribers if pipeline else 0
    capture.update({**{f"source.{k}": v for k, v in source.items()}, "rate": rate, "speed": speed,
                    "wait_for_subscribers": consumers + (1 if record_to else 0), "wait_timeout_s": 60.0,
                    "max_frames": max_frames})
    if deterministic:
        capture["lockstep_from"] = ["decision"]
    expected_hz = None if rate == "max" else FRAMES.rate_hz * speed if rate == "source" else float(rate)
    extra_params = {
        "watchdog": slow_source_limits(expected_hz),
        "detector": {"deterministic": deterministic, **(detector_params or {})},
        "decision": {"deterministic": deterministic, **(decision_params or {})},
    }
    nodes = [dataclasses.replace(capture_node, params=capture, restart="never")]
    nodes += [dataclasses.replace(n, params={**n.params, **extra_params.get(n.name, {})}) for n in downstream]
    if record_to:
        sources = None if pipeline else {FRAMES.name: ["capture"], HEARTBEAT.name: ["capture"]}
        params = {"output": str(Path(record_to).resolve()), **({"sources": sources} if sources else {}),
                  **(recorder_params or {})}
        # A recorder that cannot go on (out of space) ends the run: the rest would be lost anyway.
        nodes.append(LaunchNode(name="recorder", node="recorder", config=RECORDER_CONFIG, params=params,
                                shutdown_on_exit=True))
    return dataclasses.replace(launch, nodes=nodes, status_period_s=3600.0, drain_s=2.0, budget_ms=budget_ms)


def slow_source_limits(expected_hz: float | None) -> dict:
    """Watchdog params for a run slower than the topic table's real time (a replay at x0.1, a 5 Hz
    synthetic source): each monitored topic warns below half the expected rate and fails safe below
    a quarter of it or after 2.5 frame periods of silence, where that is looser than the table."""
    if not expected_hz:
        return {}
    table = {t.name: (t.warn_rate_hz, t.error_rate_hz, t.timeout_s) for t in MONITORED}
    limits = {name: (min(warn, 0.5 * expected_hz), min(error, 0.25 * expected_hz), max(timeout, 2.5 / expected_hz))
              for name, (warn, error, timeout) in table.items()}
    if limits == table:
        return {}
    return {"rules.topics": {name: dict(zip(("warn_rate_hz", "error_rate_hz", "timeout_s"), values))
                             for name, values in limits.items()}}


def run_pipeline(spec: LaunchFile, name: str, expected_decisions: int | None, collect: bool = True,
                 progress: bool = True) -> RunResult:
    launcher = Launcher(spec, name)
    collector = Collector(launcher.run_dir) if collect else None
    stop_progress = threading.Event()
    progress_thread = threading.Thread(target=_progress, args=(collector, expected_decisions, stop_progress),
                                       daemon=True)
    if progress and collector is not None:
        progress_thread.start()
    started = time.monotonic()
    try:
        code = launcher.run()
    finally:
        stop_progress.set()
        if progress_thread.is_alive():  # its last line goes out before the report, not through it
            progress_thread.join(1.0)
        collected = collector.close() if collector else Collected()
    failed = {m.spec.name: m.exit_code for m in launcher.nodes if m.state == "failed"}
    return RunResult(collected, code, time.monotonic() - started, failed)


def _progress(collector: Collector, total: int | None, stop: threading.Event) -> None:
    """A progress bar on stderr (tqdm): decisions made so far, of the frames expected. Where stderr
    is not a terminal (CI logs) it is a line every PROGRESS_LOG_INTERVAL_S instead of a bar redrawn."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    with tqdm(total=total or None, desc="decided", unit="frame", file=sys.stderr if tty else _Lines(sys.stderr),
              mininterval=0.25 if tty else PROGRESS_LOG_INTERVAL_S, ascii=not tty, dynamic_ncols=tty) as bar:
        while not stop.wait(0.25):
            bar.update(collector.decision_count() - bar.n)
        bar.n = collector.decision_count()  # shown once more as the bar closes


class _Lines:
    """A stream for tqdm where each redraw becomes a line of its own: in a log file, tqdm's '\r'
    redraws would run together on one line, with the pipeline's log lines appended to them."""

    def __init__(self, stream: typing.TextIO) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        count = line.split(" [", 1)[0]  # the bar and count, without the timing that changes every redraw
        if line and count != self._last:  # tqdm draws the final count again as it closes
            self.stream.write(line + "\n")
            self._last = count

    def flush(self) -> None:
        self.stream.flush()


def count_recorded_frames(path: Path) -> int:
    from perception.recording import RecordingReader

    return sum(1 for channel, _, _ in RecordingReader(path).records() if channel == FRAMES.name)


# -- compare ------------------------------------------------------------------------------


def decision_rows(collected: Collected) -> list[dict]:
    """One line per frame decided by the decision node, with the detections it was based on."""
    detections = {d.frame_id: d for d in collected.detections}
    rows = []
    for _, decision in sorted(((t, d) for t, d in collected.decisions if not d.failsafe),
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
                 score_tolerance: float = 0.02, decisions_only: bool = False) -> list[str]:
    """Differences, one line each. Actions, reasons, targets and exits must be equal; boxes and
    scores may differ by float noise between CPUs (the tolerances), not more. `decisions_only`:
    actions, reasons and targets alone (a run of another policy against a full-depth reference)."""
    ref = {row["frame_id"]: row for row in reference}
    cur = {row["frame_id"]: row for row in current}
    differences = []
    for frame_id in sorted(ref.keys() | cur.keys()):
        a, b = ref.get(frame_id), cur.get(frame_id)
        if a is None or b is None:
            differences.append(f"frame {frame_id}: {'missing in reference' if a is None else 'no decision in this run'}")
            continue
        for key in ("action", "reason", "target_class") + (() if decisions_only else ("exit",)):
            if a[key] != b[key]:
                differences.append(f"frame {frame_id}: {key} {a[key]} -> {b[key]}")
        if not decisions_only and a["detections"] is not None and b["detections"] is not None:
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
    parser.add_argument("--decision", metavar="KEY=VALUE", action="append", default=[],
                        help="override a decision config key for this run, e.g. rules.brake_height=0.5 (repeatable)")
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a detector config key for this run, e.g. policy.kind=fixed (repeatable)")
    parser.add_argument("--save", type=Path, help="write this run's decisions (JSON lines) here")
    parser.add_argument("--compare", type=Path, help="a reference saved with --save: print the differences")
    parser.add_argument("--decisions-only", action="store_true",
                        help="with --compare: compare actions, reasons and targets only, not exits and boxes")
    parser.add_argument("--json", type=Path, help="write the latency report (docs/REPORT.md) here")
    parser.add_argument("--plots", type=Path, help="write latency plots (PNG) into this folder")
    add_foxglove_argument(parser)
    args = parser.parse_args(argv)
    deterministic = args.speed == "max"
    decision = dict(parse_override(item, "--decision") for item in args.decision)
    detector = dict(parse_override(item, "--detector") for item in args.detector)
    try:
        speed = 1.0 if deterministic else float(args.speed)
    except ValueError:
        parser.error(f"--speed must be a number or 'max', got {args.speed!r}")
    try:
        frames = count_recorded_frames(args.recording)
    except Exception as exc:  # RecordingError and friends: one line naming the file
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Read before the run: a missing or broken reference is an error now, not after a long replay.
    reference = load_rows(args.compare) if args.compare else None
    spec = pipeline_launch({"kind": "recording", "path": str(args.recording.resolve())}, rate="max" if deterministic else "source",
                           speed=speed, deterministic=deterministic, budget_ms=args.budget_ms, decision_params=decision,
                           detector_params=detector)
    spec = _with_live_view(spec, args.foxglove, "replay")
    if spec is None:
        return EXIT_BAD_INPUT
    result = run_pipeline(spec, f"replay of {args.recording}", frames)
    title = (f"replay {args.recording.name} ({'deterministic, max speed' if deterministic else f'x{speed:g} recorded time'})"
             + "".join(f", {k} {v}" for k, v in {**decision, **detector}.items()))
    report = build_report(result.collected, args.budget_ms, title=title)
    print(format_report(report))
    write_outputs(report, args.json, args.plots)
    rows = decision_rows(result.collected)
    if args.save:
        args.save.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"saved {len(rows)} decisions to {args.save}")
    if reference is not None:
        differences = compare_rows(reference, rows, decisions_only=args.decisions_only)
        for line in differences[:50]:
            print(line)
        print(f"compare with {args.compare}: {len(differences)} difference(s) over {len(rows)} frames")
        if differences:
            return EXIT_DIFFERENT
    return result.exit_code


def _with_live_view(spec: LaunchFile, port: int | None, command: str) -> LaunchFile | None:
    """`spec`, plus the live-view node when `--foxglove` was given; None (after one line) when it cannot serve."""
    if port is None:
        return spec
    try:
        return with_viewer(spec, port, str(PIPELINE_LAUNCH))
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None


def source_spec(path: Path) -> dict:
    """The capture source for `perception record --source PATH`: an image folder, an MCAP recording or a video."""
    if path.is_dir():
        return {"kind": "images", "path": str(path.resolve()), "fps": 10.0}
    return {"kind": "recording" if path.suffix == ".mcap" else "video", "path": str(path.resolve())}


def probe_source(spec: dict) -> None:
    """Open the source as the capture node will, and close it again, so that a missing file, an
    undecodable video, an empty image folder or a file that is not a recording is one line now,
    before any process starts. Raises SourceError."""
    from perception.sources import SourceConfig, open_source

    open_source(from_mapping(SourceConfig, spec, source="--source")).close()


def record_main(argv: list[str] | None = None) -> int:
    from perception.recording import MB, RecordingError, check_room
    from perception.sources import SourceError

    parser = argparse.ArgumentParser(prog="perception record", description="record a drive (every topic) to MCAP")
    parser.add_argument("output", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", type=Path, help="a video file, image folder or recording")
    source.add_argument("--camera", type=int, help="an OpenCV camera index")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--frames-only", action="store_true", help="record the camera alone, without the pipeline")
    parser.add_argument("--image-format", choices=["jpeg", "raw"], default=None, help="default: configs/recorder.yaml")
    parser.add_argument("--jpeg-quality", type=int, default=None, help="1-100; default: configs/recorder.yaml")
    parser.add_argument("--min-free-mb", type=float, default=None,
                        help="space to leave free on the output's disk: no start with less, the end when less is "
                             "left; default: configs/recorder.yaml")
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    recorder_params = {key: value for key, value in (("image_format", args.image_format), ("jpeg_quality", args.jpeg_quality),
                                                     ("min_free_mb", args.min_free_mb)) if value is not None}
    spec_source = {"kind": "camera", "camera_index": args.camera} if args.camera is not None else source_spec(args.source)
    # The recorder never overwrites a file (it would write NAME-1.mcap beside it), so an existing
    # output would leave this command reporting on the wrong file.
    if args.output.exists():
        print(f"record: {args.output} exists; remove it or choose another name", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec = pipeline_launch(spec_source, record_to=args.output, pipeline=not args.frames_only, max_frames=args.frames,
                           recorder_params=recorder_params)
    recorder = next(n for n in spec.nodes if n.name == "recorder")
    min_free = int(resolve_node_config(recorder, str(PIPELINE_LAUNCH))[1].min_free_mb * MB)
    folder = args.output.resolve().parent
    try:
        probe_source(spec_source)
        check_room(folder, min_free)
    except (SourceError, RecordingError) as exc:
        print(f"record: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = run_pipeline(spec, f"record {args.output}", args.frames, collect=not args.frames_only, progress=False)
    try:
        frames = count_recorded_frames(args.output) if args.output.exists() else 0
    except RecordingError as exc:  # written but unreadable: kept for a look, never called a drive
        print(f"record: failed: {exc}", file=sys.stderr)
        return 1
    what = f"{args.source}" if args.source else f"camera {args.camera}"
    if frames == 0:
        # An empty file is not a drive: leave nothing that `perception replay` would take for one.
        args.output.unlink(missing_ok=True)
    if result.exit_code != 0 or frames == 0:
        reasons = [_output_failure(args.output, min_free) if name == "recorder" and code == EXIT_OUTPUT
                   else f"{name} exited with code {code}" for name, code in result.failed.items()]
        why = ", ".join(reasons) or (f"the launcher exited with code {result.exit_code}" if result.exit_code
                                     else f"no frame of {what} reached the recorder")
        kept = f"the {frames} frames recorded before it are in {args.output}" if frames else "nothing was recorded"
        print(f"record: failed: {why} (see the log above); {kept}", file=sys.stderr)
        return result.exit_code or 1
    print(f"recorded {frames} frames of {what} to {args.output} in {result.seconds:.1f} s")
    return 0


def _output_failure(output: Path, min_free: int) -> str:
    """Why the recorder could not go on (it exited with EXIT_OUTPUT), as the disk tells it now: it
    stops when less than `min_free` is left, and a write the disk refused leaves about nothing."""
    folder = output.resolve().parent
    if shutil.disk_usage(folder).free < max(min_free, 1):
        return f"out of space on {folder}"
    return f"the recorder could not write {output}"


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
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--detector", metavar="KEY=VALUE", action="append", default=[],
                        help="override a detector config key for this run, e.g. engine.threads=1 (repeatable)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path)
    parser.add_argument("--baseline", action="store_true",
                        help="then run the same source in one plain process (read, full YOLOX-nano, decode, decide) "
                             "and print the pipeline's end-to-end p50/p99 as a ratio of it")
    add_foxglove_argument(parser)
    args = parser.parse_args(argv)
    from perception.benchmarks.watchdog import burn_cpu

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
        recording = args.recording or BUNDLED_DRIVE
        frames = count_recorded_frames(recording) * args.loops
        source = {"kind": "recording", "path": str(recording.resolve()), "loop": args.loops > 1}
        rate = args.rate or "source"
        title = f"bench {recording.name}" + (f" at {rate:g} Hz" if args.rate else " at recorded rate")
    title += f", load {args.load}" + "".join(f", {k} {v}" for k, v in detector.items())
    spec = pipeline_launch(source, rate=rate, budget_ms=args.budget_ms, detector_params=detector, max_frames=frames)
    spec = _with_live_view(spec, args.foxglove, "bench")
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
