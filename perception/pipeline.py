"""The pipeline run as one job, written once: launch/replay.yaml with its capture reading a given
source (and a recorder when recording), run to its end under the real launcher with its outputs
collected for the latency report. `perception replay`, `record`, `bench` and fleet replay all run it."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from perception import REPO
from perception.config import ConfigError
from perception.connector import Connector
from perception.graph import every_output
from perception.launch import LaunchFile, LaunchNode, Launcher, load_launch_file, resolve_node_config
from perception.progress import progress_bar
from perception.report import Collected, Collector
from perception.topics import FRAMES, MONITORED
from perception.visualization import with_viewer

# The pipeline is defined once, in this launch file; replay, bench and record adjust its capture
# source and add a recorder, they do not list the nodes again.
PIPELINE_LAUNCH = REPO / "launch" / "replay.yaml"
RECORDER_CONFIG = REPO / "configs" / "recorder.yaml"
BUNDLED_DRIVE = REPO / "recordings" / "udacity_dashcam.mcap"
DETERMINISTIC_STARTUP_S = 180.0  # a deterministic replay's nodes: time to their first heartbeat...
DETERMINISTIC_HANG_S = 30.0  # ...and the longest silence before the launcher calls one hung


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
    its own progress and report); a longer drain, so the last decisions of a loaded run still count;
    and a deterministic run, which is not real time, gives its nodes DETERMINISTIC_STARTUP_S to start
    and DETERMINISTIC_HANG_S before a stale heartbeat counts as a hang (many drives at once on a
    loaded machine stall nodes for seconds: killing them would end the run, not catch a hang)."""
    launch = load_launch_file(PIPELINE_LAUNCH)
    capture_node = next(n for n in launch.nodes if n.name == "capture")
    downstream = [n for n in launch.nodes if n.name != "capture"] if pipeline else []
    capture = dict(capture_node.params)
    capture_inputs = {k: v for k, v in capture_node.inputs.items() if pipeline or k != "ready"}
    # Subscribers to wait for before the first frame: the pipeline's frame consumers as the capture
    # config counts them, plus the recorder.
    consumers = resolve_node_config(capture_node, str(PIPELINE_LAUNCH))[1].wait_for_subscribers if pipeline else 0
    capture.update({**{f"source.{k}": v for k, v in source.items()}, "rate": rate, "speed": speed,
                    "wait_for_subscribers": consumers + (1 if record_to else 0), "wait_timeout_s": 60.0,
                    "max_frames": max_frames})
    if deterministic:
        capture_inputs["lockstep"] = "decision/decisions"
    expected_hz = None if rate == "max" else FRAMES.rate_hz * speed if rate == "source" else float(rate)
    extra_params = {
        "watchdog": slow_source_limits(expected_hz),
        "detector": {"deterministic": deterministic, **(detector_params or {})},
        "decision": {"deterministic": deterministic, **(decision_params or {})},
    }
    nodes = [dataclasses.replace(capture_node, inputs=capture_inputs, params=capture, restart="never")]
    nodes += [dataclasses.replace(n, params={**n.params, **extra_params.get(n.name, {})}) for n in downstream]
    if deterministic:
        nodes = [dataclasses.replace(n, startup_timeout_s=max(n.startup_timeout_s, DETERMINISTIC_STARTUP_S),
                                     hang_timeout_s=max(n.hang_timeout_s or 0.0, DETERMINISTIC_HANG_S)) for n in nodes]
    if record_to:
        params = {"output": str(Path(record_to).resolve()), **(recorder_params or {})}
        # A recorder that cannot go on (out of space) ends the run: the rest would be lost anyway.
        nodes.append(LaunchNode(name="recorder", node="recorder", config=RECORDER_CONFIG, inputs=every_output(nodes),
                                params=params, shutdown_on_exit=True))
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


def run_pipeline(spec: LaunchFile | Launcher, name: str, expected_decisions: int | None, collect: bool = True,
                 progress: bool = True) -> RunResult:
    """Run a launch to its end under the real launcher, collecting its outputs for the latency report:
    what replay, record, bench and fleet replay run. `spec` may be a Launcher already made (its run
    id and directory known before it runs). CollectorError if the collector died mid-run."""
    launcher = spec if isinstance(spec, Launcher) else Launcher(spec, name)
    collector = Collector(launcher.graph, Connector("collector", launcher.run_dir)) if collect else None
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
    """Decisions made so far, of the frames expected (perception.progress)."""
    with progress_bar(total, "decided", "frame") as bar:
        while not stop.wait(0.25):
            bar.update(collector.decision_count() - bar.n)
        bar.n = collector.decision_count()  # shown once more as the bar closes


def count_recorded_frames(path: Path) -> int:
    return recorded_frames(path)[0]


def recorded_frames(path: Path) -> tuple[int, bool]:
    """(frames in the recording at `path`, whether it was cut short: read to its last complete record)."""
    from perception.recording_reader import RecordingReader

    reader = RecordingReader(path)
    frames = sum(1 for channel, _, _ in reader.records() if channel == FRAMES.name)
    return frames, reader.truncated


def with_live_view(spec: LaunchFile, port: int | None, command: str) -> LaunchFile | None:
    """`spec`, plus the live-view node when `--foxglove` was given; None (after one line) when it cannot serve."""
    if port is None:
        return spec
    try:
        return with_viewer(spec, port, str(PIPELINE_LAUNCH))
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
