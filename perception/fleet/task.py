"""One drive's deterministic replay, as a Ray task runs it (and as a test may call it directly).

It is `perception replay DRIVE --speed max` (perception/replay.py): the same launch spec, the real
node processes under a Launcher, the same decision rows and latency report. Ray is not imported
here; command.py wraps `replay_drive` with `ray.remote`.

Parallel replays on one host do not collide: every Launcher makes its own private run directory
(`/tmp/perception-<run id>`: ipc sockets, node locks, stop orders) and names its shared-memory
rings `perception-<run id>-<node>-<pid>`; node names are the same in every run, and only ever
resolved inside a run directory. The run id is returned so the report and the tests can check that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from perception.launch import Launcher
from perception.recording import RecordingError
from perception.pipeline import recorded_frames, pipeline_launch, run_pipeline
from perception.replay import decision_rows
from perception.report import CollectorError, build_report

LOG_TAIL_LINES = 15
BUDGET_MS = 100.0  # `perception replay`'s default; lockstep replays never miss it (the decision node is deterministic)


def replay_drive(drive: str, threads: int, log_path: str) -> dict:
    """Replay `drive` deterministically with the detector on `threads` ONNX Runtime threads; the
    launcher's and nodes' output goes to `log_path`. Returns a plain dict (it crosses Ray):
    `status` "ran" or "failed", `reason` (one line, for a failure), `frames`, `rows` (decision_rows),
    `report` (build_report), `seconds`, `run_id`, `run_dir`, `host`, and for a failure `log` (kept,
on the worker's host) and `log_tail`; a drive that ran leaves no log behind.

    Bad input (a missing or corrupt file, a drive with no frames) and a run whose nodes failed are
    results, not exceptions: the fleet reports them and goes on with the other drives."""
    started = time.monotonic()
    result: dict = {"drive": drive, "status": "failed", "reason": None, "frames": None, "rows": [], "report": None,
                    "run_id": None, "run_dir": None, "host": socket.gethostname(), "log": log_path, "log_tail": []}
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with _output_to(Path(log_path)):
        try:
            result.update(_replay(Path(drive), threads))
        finally:
            result["seconds"] = round(time.monotonic() - started, 3)
    result["log_tail"] = tail_lines(Path(log_path), LOG_TAIL_LINES) if result["status"] == "failed" else []
    if not result["log_tail"]:
        # Kept only where something went wrong and it says what (on a cluster it would pile up on the workers).
        Path(log_path).unlink(missing_ok=True)
        result["log"] = None
    return result


def _replay(drive: Path, threads: int) -> dict:
    if not drive.is_file():
        # On a cluster every worker host needs the drives at the same path (a shared filesystem).
        return {"reason": f"{drive}: not found on host {socket.gethostname()}"}
    try:
        frames, truncated = recorded_frames(drive)
    except RecordingError as exc:
        return {"reason": str(exc)}
    if frames == 0:
        return {"reason": "no frames in this recording" + (" (cut short)" if truncated else ""), "frames": 0}
    spec = pipeline_launch({"kind": "recording", "path": str(drive.resolve())}, rate="max", deterministic=True,
                           budget_ms=BUDGET_MS, detector_params={"engine.threads": threads})
    launcher = Launcher(spec, f"fleet replay of {drive}")  # made first: its run id and directory go into the report
    outcome: dict = {"frames": frames, "truncated": truncated, "run_id": launcher.run_id, "run_dir": str(launcher.run_dir)}
    try:
        result = run_pipeline(launcher, launcher.launch_path, frames, progress=False)
    except CollectorError as exc:
        return {**outcome, "reason": str(exc)}
    collected, code = result.collected, result.exit_code
    failed = [f"{name} exited with code {exit_code}" for name, exit_code in result.failed.items()]
    report = build_report(collected, BUDGET_MS, title=f"fleet replay {drive.name} (deterministic, max speed)")
    rows = decision_rows(collected)
    outcome.update(report=report, rows=rows)
    if failed or code != 0:
        return {**outcome, "reason": ", ".join(failed) or f"the launcher exited with code {code}"}
    if len(rows) < frames:
        # In lockstep capture sends a frame only after the decision about the one before: every
        # frame is decided, so fewer decisions means the run broke off.
        return {**outcome, "reason": f"only {len(rows)} of {frames} frames decided"}
    return {**outcome, "status": "ran"}


@contextlib.contextmanager
def _output_to(log_path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so the node processes it starts
    inherit them) and the launcher's logging to `log_path` for the duration. A Ray worker runs one
    task at a time, and eight drives' node logs interleaved on one terminal would be unreadable."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    handler = None
    with open(log_path, "ab", buffering=0) as log_file:
        try:
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
                                                   "%H:%M:%S"))
            root = logging.getLogger()
            root.addHandler(handler)
            level = root.level
            root.setLevel(logging.INFO)
            try:
                yield
            finally:
                root.setLevel(level)
                root.removeHandler(handler)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def tail_lines(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
