"""Test helpers: tiny media made on the fly, process and polling utilities."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from perception.rundir import stop_order_path
from perception.sources import write_frame_index

REPO = Path(__file__).resolve().parents[1]


def make_video(path: Path, frames: int = 20, size: tuple[int, int] = (160, 120), fps: float = 20.0,
               noise: bool = False) -> Path:
    """An MJPG AVI whose frame i carries i in its top-left block (see write_frame_index); `noise`:
    on seeded noise, which no compression shrinks (a recording then takes its full size on disk)."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for i in range(frames):
        frame = (np.random.default_rng(i).integers(0, 256, (height, width, 3), np.uint8) if noise
                 else np.full((height, width, 3), 40, np.uint8))
        cv2.rectangle(frame, (20 + i, 30), (60 + i, 80), (0, 200, 255), -1)
        write_frame_index(frame, i)
        writer.write(frame)
    writer.release()
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; it only waits for its parent to reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()


def run_python(args: list[str], timeout_s: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout_s, cwd=REPO, **kwargs)


def order_stop(process: subprocess.Popen) -> None:
    """Leave the stop order the launcher leaves before it signals a node (perception.rundir.stop_order_path),
    so the node leaves quietly (exit 0, STOPPING) instead of as failed. Works for a node started with
    `--name N` under $PERCEPTION_RUN_DIR, as the run_dir fixture sets it."""
    args = [str(a) for a in process.args]
    run_dir = os.environ.get("PERCEPTION_RUN_DIR")
    if "--name" in args and run_dir:
        stop_order_path(Path(run_dir), args[args.index("--name") + 1]).touch()


def stop_process(process: subprocess.Popen, timeout_s: float = 5, ordered: bool = True) -> None:
    """SIGTERM, then SIGKILL after `timeout_s`; `ordered`: as the launcher would (see order_stop)."""
    if ordered and process.poll() is None:
        order_stop(process)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The shipped launches' graph (launch/replay.yaml), as inline YAML for the entries of a test's launch file.
EDGES = {
    "capture": "outputs: [frames]",
    "detector": "inputs: {frames: capture/frames, control: watchdog/control}, outputs: [detections]",
    "decision": "inputs: {detections: detector/detections}, outputs: [decisions]",
    "watchdog": "inputs: {frames: capture/frames, detections: detector/detections, decisions: decision/decisions, "
                "heartbeats: [capture/heartbeat, detector/heartbeat, decision/heartbeat]}, outputs: [decisions, status, control]",
}
READY = "inputs: {ready: [detector/heartbeat, decision/heartbeat, watchdog/heartbeat]}, "  # capture waits for them


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_two_hosts(tmp_path: Path, ports: list[int], transport: str = "inline", clock_ports: tuple[int, int] | None = None,
                    rate: float = 10) -> Path:
    """A launch split over hosts camera (capture) and compute (detector, decision, watchdog) on
    loopback, CURVE keys in tmp_path/keys; node ports `ports`, the hosts' clock servers on `clock_ports`."""
    camera_clock, compute_clock = clock_ports or (free_port(), free_port())
    (tmp_path / "capture.yaml").write_text(
        "node: {heartbeat_period_ms: 50}\nsource: {kind: synthetic, width: 320, height: 240, fps: %g}\n" % rate
        + f"rate: {rate}\ntransport: {transport}\nwait_for_subscribers: 2\n"
    )
    (tmp_path / "detector.yaml").write_text(
        f"node: {{heartbeat_period_ms: 50}}\nmodel: {REPO / 'perception/weights/yolox_nano_exits.json'}\n"
        "engine: {threads: 1}\npolicy: {kind: fixed, exit: 0}\n"
    )
    (tmp_path / "decision.yaml").write_text("node: {heartbeat_period_ms: 50}\n")
    (tmp_path / "watchdog.yaml").write_text(
        "node: {heartbeat_period_ms: 50}\n"
        "rules: {heartbeat_timeout_ms: 300, startup_grace_ms: 2000}\n"
    )
    launch = tmp_path / "split.yaml"
    launch.write_text(
        f"status_period_s: 60\nbudget_ms: 100\nkeys: keys\n"
        f"hosts: {{camera: {{address: 127.0.0.1, clock_port: {camera_clock}}}, "
        f"compute: {{address: 127.0.0.1, clock_port: {compute_clock}}}}}\nnodes:\n"
        + "".join(f"  - {{name: {n}, node: {n}, config: {n}.yaml, host: {h}, port: {port}, restart_delay_s: 0.2, "
                  f"{READY if n == 'capture' else ''}{EDGES[n]}}}\n"
                  for (n, h), port in zip([("capture", "camera"), ("detector", "compute"), ("decision", "compute"),
                                           ("watchdog", "compute")], ports))
    )
    return launch


_SMALL_FILESYSTEM = ('mount -t tmpfs -o "$1" tmpfs "$2" || exit 125; mounted=$2 after=$3; shift 3; '
                     '"$@"; code=$?; cp -a "$mounted/." "$after/"; exit $code')


def run_on_small_filesystem(args: list[str], folder: Path, size_mb: float, read_only: bool = False,
                            timeout_s: float = 120, **kwargs) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `python ARGS` with a filesystem of `size_mb` (a tmpfs, `read_only` or not) at `folder`,
    made here, so that a full or read-only disk is real, not simulated. It is mounted in a mount
    namespace of the command's own (`unshare`, as root or where unprivileged user namespaces are
    allowed), so nothing is mounted on this machine; what it holds at the end is copied to a
    folder beside it, whose path is returned with the result. Skips the test where that cannot be."""
    import pytest

    folder.mkdir()
    after = folder.with_name(folder.name + "-after")
    after.mkdir()
    options = f"size={int(size_mb * 1024)}k" + (",ro" if read_only else "")
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _SMALL_FILESYSTEM, "sh", options,
               str(folder), str(after), sys.executable, *args]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                   start_new_session=True, **kwargs)
    except FileNotFoundError:
        pytest.skip("a small filesystem of its own needs unshare (util-linux)")
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the command's children too, which hold its pipes
        process.communicate()
        raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if result.returncode == 125 or result.stderr.startswith("unshare:"):
        pytest.skip(f"no mount namespace of its own here (unprivileged user namespaces off?): {result.stderr.strip()}")
    return result, after
