"""End to end: real node processes under the launcher, on ipc sockets and shared memory."""

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, free_port, make_video, pid_alive, run_python, stop_process, wait_for, write_two_hosts
from perception.shm_ring import segments_with_prefix

NOBODY = "external: {nobody: [frames]}\n"  # a publisher nobody starts: a monitor reading it idles


def write_launch(tmp_path: Path, video: Path, record: Path) -> Path:
    (tmp_path / "capture.yaml").write_text(
        f"node: {{heartbeat_period_ms: 50}}\n"
        f"source: {{kind: video, path: {video.name}, loop: true}}\n"
        "rate: 50\nwait_for_subscribers: 1\n"
    )
    (tmp_path / "monitor.yaml").write_text(f"node: {{heartbeat_period_ms: 50}}\nrecord: {record.name}\nlatest: false\n")
    launch = tmp_path / "test.yaml"
    launch.write_text(
        "status_period_s: 60\n"
        "nodes:\n"
        "  - {name: capture, node: capture, config: capture.yaml, restart: on-failure, restart_delay_s: 0.1, outputs: [frames]}\n"
        "  - {name: monitor, node: monitor, config: monitor.yaml, restart: on-failure, inputs: {frames: capture/frames}}\n"
    )
    return launch


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def node_row(status: dict, name: str) -> dict:
    return next(row for row in status["nodes"] if row["name"] == name)


@pytest.fixture
def launched(tmp_path):
    video = make_video(tmp_path / "clip.avi", frames=20)
    record = tmp_path / "frames.jsonl"
    status_file = tmp_path / "status.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "perception.cli", "launch", str(write_launch(tmp_path, video, record)),
         "--status-file", str(status_file)],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    yield process, record, status_file
    if process.poll() is None:
        process.kill()
        process.wait()


def test_frames_flow_a_killed_node_restarts_and_shutdown_is_clean(launched):
    process, record, status_file = launched

    # Frames arrive in order, intact, with their latency stamps.
    assert wait_for(lambda: len(read_records(record)) >= 30, timeout_s=30), "no frames reached the monitor"
    records = read_records(record)
    first_stream = [r for r in records if r["ring"] == records[0]["ring"]]
    assert [r["frame_id"] for r in first_stream] == list(range(1, len(first_stream) + 1))
    assert all(r["intact"] for r in first_stream)
    assert all(r["pixel_index"] == (r["frame_id"] - 1) % 20 for r in first_stream)
    assert all(list(r["stages_ns"]) == ["capture", "publish", "monitor"] for r in first_stream)
    assert all(0 < r["latency_ns"] < 1e9 for r in first_stream)

    # Kill the capture node: the launcher restarts it and frames flow again from a new ring.
    status = wait_for(lambda: read_status(status_file), timeout_s=5)
    run_id = status["run_id"]
    old_pid = node_row(status, "capture")["pid"]
    old_ring = f"perception-{run_id}-capture-{old_pid}"
    assert old_ring in segments_with_prefix(old_ring)
    time.sleep(0.1)
    subprocess.run(["kill", "-KILL", str(old_pid)], check=True)
    restarted = wait_for(lambda: (s := read_status(status_file)) and node_row(s, "capture")["restarts"] == 1
                         and node_row(s, "capture")["state"] == "running" and s, timeout_s=10)
    assert restarted, "capture was not restarted"
    new_pid = node_row(restarted, "capture")["pid"]
    assert new_pid != old_pid
    assert wait_for(lambda: any(r["ring"].endswith(f"-{new_pid}") for r in read_records(record)), timeout_s=15)
    assert not segments_with_prefix(old_ring), "the killed node's shared memory was not removed"
    assert node_row(read_status(status_file), "monitor")["restarts"] == 0

    # SIGTERM: everything stops within 2 s, nothing is left behind.
    pids = [row["pid"] for row in read_status(status_file)["nodes"]]
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=5)
    assert time.monotonic() - started < 2.5
    assert process.returncode == 0, process.stderr.read()
    assert not any(pid_alive(pid) for pid in pids), "orphaned node processes"
    assert segments_with_prefix(f"perception-{run_id}") == []
    assert not Path(read_status(status_file)["run_dir"]).exists()


def test_nodes_die_with_a_killed_launcher(launched):
    process, record, status_file = launched
    status = wait_for(lambda: (s := read_status(status_file)) and all(r["pid"] for r in s["nodes"]) and s, timeout_s=15)
    assert wait_for(lambda: len(read_records(record)) > 0, timeout_s=30)
    pids = [row["pid"] for row in status["nodes"]]
    process.kill()
    process.wait()
    assert wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout_s=3), "nodes outlived the launcher"


def test_a_misspelled_key_fails_the_launch_before_any_node_starts(tmp_path):
    (tmp_path / "capture.yaml").write_text("source: {kind: synthetic}\nrat: 10\n")
    launch = tmp_path / "bad.yaml"
    launch.write_text("nodes:\n  - {name: capture, node: capture, config: capture.yaml}\n")
    result = run_python(["-m", "perception.cli", "launch", str(launch)])
    assert result.returncode == 78
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "capture.yaml (node capture): rat: unknown key (did you mean 'rate'?)" in errors[0]
    assert "started" not in result.stderr


def test_unknown_node_module_and_bad_restart_policy_are_named(tmp_path):
    (tmp_path / "c.yaml").write_text("source: {kind: synthetic}\n")
    launch = tmp_path / "bad.yaml"
    launch.write_text("nodes:\n  - {name: cam, node: camera, config: c.yaml}\n")
    result = run_python(["-m", "perception.cli", "launch", str(launch)])
    assert result.returncode == 78 and "nodes[cam].node: no node module 'nodes.camera'" in result.stderr
    launch.write_text("nodes:\n  - {name: cam, node: capture, config: c.yaml, restart: sometimes}\n")
    result = run_python(["-m", "perception.cli", "launch", str(launch)])
    assert result.returncode == 78 and "nodes[0].restart: must be one of 'never', 'on-failure', 'always'" in result.stderr


def test_bundled_replay_launch_accounts_for_every_frame_of_the_drive():
    result = run_python(["-m", "perception.cli", "launch", "launch/replay.yaml"], timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert "source ended after 38 frames" in result.stderr
    exits = re.search(r"detector INFO capture->detections .* exits (\{.*\})", result.stderr)
    frames = re.search(r"detector INFO frames received (\d+) superseded (\d+) malformed (\d+) \| (.*)", result.stderr)
    assert exits and frames, result.stderr
    received, superseded, malformed = map(int, frames.groups()[:3])
    drops = dict(re.findall(r"(stale|overwritten|bad) (\d+)", frames.group(4)))
    processed = sum(ast.literal_eval(exits.group(1)).values())
    assert received + superseded + malformed == 38  # every frame published reached the detector
    assert processed + sum(map(int, drops.values())) == received  # and each was detected or dropped, counted
    assert processed > 0


def test_a_replay_whose_source_is_missing_ends_with_one_clear_error(tmp_path):
    launch = tmp_path / "replay.yaml"
    launch.write_text(
        f"nodes:\n"
        f"  - name: capture\n    node: capture\n    config: {REPO}/configs/capture_replay.yaml\n"
        f"    params: {{source.path: {tmp_path}/gone.mp4}}\n    shutdown_on_exit: true\n    outputs: [frames]\n"
        f"  - {{name: monitor, node: monitor, config: {REPO}/configs/monitor.yaml, inputs: {{frames: capture/frames}}}}\n"
    )
    result = run_python(["-m", "perception.cli", "launch", str(launch)], timeout_s=30)
    assert result.returncode == 1
    assert "gone.mp4: file not found" in result.stderr
    assert "bad config or input, not restarting" in result.stderr
    assert "capture failed; ending the launch" in result.stderr


def test_a_node_gets_the_realtime_priority_and_nice_its_launch_file_asks_for(tmp_path):
    (tmp_path / "monitor.yaml").write_text("node: {}\n")
    launch = tmp_path / "rt.yaml"
    launch.write_text(
        f"status_period_s: 60\n{NOBODY}nodes:\n"
        "  - {name: watcher, node: monitor, config: monitor.yaml, realtime_priority: 10, inputs: {frames: nobody/frames}}\n"
        "  - {name: background, node: monitor, config: monitor.yaml, nice: 5, inputs: {frames: nobody/frames}}\n"
    )
    status_file = tmp_path / "status.json"
    process = subprocess.Popen([sys.executable, "-m", "perception.cli", "launch", str(launch), "--status-file",
                                str(status_file)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        def pids():
            status = read_status(status_file)
            rows = {r["name"]: r.get("pid") for r in status["nodes"]} if status else {}
            return rows if all(rows.get(n) for n in ("watcher", "background")) else None

        assert wait_for(pids, timeout_s=30)
        rows = pids()
        permitted = os.geteuid() == 0
        if permitted:
            assert os.sched_getscheduler(rows["watcher"]) == os.SCHED_FIFO
            assert os.sched_getparam(rows["watcher"]).sched_priority == 10
        assert os.sched_getscheduler(rows["background"]) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, rows["background"]) == os.getpriority(os.PRIO_PROCESS, 0) + 5
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    if not permitted:
        assert "launch: watcher: scheduling (nice 0, realtime priority 10) refused" in stderr


def test_an_out_of_range_realtime_priority_is_a_config_error(tmp_path):
    launch = tmp_path / "bad.yaml"
    (tmp_path / "monitor.yaml").write_text("node: {}\n")
    launch.write_text(f"{NOBODY}nodes:\n  - {{name: w, node: monitor, config: monitor.yaml, realtime_priority: 120, "
                      "inputs: {frames: nobody/frames}}\n")
    result = run_python(["-m", "perception.cli", "launch", str(launch)])
    assert result.returncode != 0
    assert "realtime_priority: must be in [1, 99], got 120" in result.stderr and "Traceback" not in result.stderr


def test_a_module_in_nodes_that_is_not_a_node_is_named_not_a_traceback(tmp_path):
    (tmp_path / "c.yaml").write_text("source: {kind: synthetic}\n")
    launch = tmp_path / "bad.yaml"
    for module in ("__init__", "os"):
        launch.write_text(f"nodes:\n  - {{name: cam, node: {module}, config: c.yaml}}\n")
        result = run_python(["-m", "perception.cli", "launch", str(launch)])
        assert result.returncode == 78 and "Traceback" not in result.stderr, result.stderr
        assert "is not a node module name" in result.stderr or "no node module" in result.stderr


def test_a_hung_node_is_killed_and_restarted_and_a_short_stall_is_not(tmp_path):
    (tmp_path / "monitor.yaml").write_text("node: {heartbeat_period_ms: 50}\n")
    launch = tmp_path / "hang.yaml"
    launch.write_text(f"status_period_s: 60\n{NOBODY}nodes:\n"
                      "  - {name: watcher, node: monitor, config: monitor.yaml, hang_timeout_s: 1.0, restart_delay_s: 0.1, "
                      "inputs: {frames: nobody/frames}}\n")
    status_file = tmp_path / "status.json"
    process = subprocess.Popen([sys.executable, "-m", "perception.cli", "launch", str(launch), "--status-file",
                                str(status_file)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        row = wait_for(lambda: (s := read_status(status_file)) and (r := node_row(s, "watcher"))["node_state"]
                       and r, timeout_s=30)
        assert row, "the node never heartbeated"
        pid = row["pid"]
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.4)  # well under hang_timeout_s
        os.kill(pid, signal.SIGCONT)
        time.sleep(1.0)
        assert node_row(read_status(status_file), "watcher")["restarts"] == 0
        os.kill(pid, signal.SIGSTOP)  # now for good
        restarted = wait_for(lambda: (r := node_row(read_status(status_file), "watcher"))["restarts"] == 1
                             and r["state"] == "running" and r["pid"] != pid and r, timeout_s=10)
        assert restarted and restarted["hangs"] == 1 and not pid_alive(pid)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert "watcher is hung (heartbeat stale for" in stderr and "restarting in" in stderr


def test_run_directories_are_private_and_a_killed_launchers_leftovers_are_cleaned_at_the_next_start(tmp_path):
    import stat
    import tempfile
    from multiprocessing import shared_memory

    from perception.launch import Launcher, LaunchFile, LaunchNode
    from perception.rundir import OWNER_FILE, process_start_time

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process is gone
    stale = Path(tempfile.gettempdir()) / "perception-stale0test"
    stale.mkdir(exist_ok=True)
    (stale / OWNER_FILE).write_text(f"{gone.pid} 12345")
    segment = shared_memory.SharedMemory(name="perception-stale0test-capture-1", create=True, size=64)
    segment.close()
    alive = Path(tempfile.gettempdir()) / "perception-alive0test"
    alive.mkdir(exist_ok=True)
    (alive / OWNER_FILE).write_text(f"{os.getpid()} {process_start_time(os.getpid())}")  # this process: running
    (tmp_path / "monitor.yaml").write_text("node: {}\n")
    try:
        monitor = LaunchNode(name="m", node="monitor", config=tmp_path / "monitor.yaml", inputs={"frames": "nobody/frames"})
        launcher = Launcher(LaunchFile(nodes=[monitor], external={"nobody": ["frames"]}), "test")
        assert not stale.exists() and segments_with_prefix("perception-stale0test-") == []
        assert alive.exists()
        assert stat.S_IMODE(launcher.run_dir.stat().st_mode) == 0o700
        launcher.stop()
    finally:
        import shutil
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def test_a_second_node_with_the_same_name_in_one_run_fails_with_one_line(run_dir, tmp_path):
    (tmp_path / "monitor.yaml").write_text("node: {inputs: {frames: [nobody/frames]}}\n")
    command = [sys.executable, "-m", "nodes.monitor", "--name", "twin", "--config", str(tmp_path / "monitor.yaml")]
    first = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (run_dir / "twin.pub").exists(), timeout_s=15)
        second = run_python(command[1:], timeout_s=30)
        assert second.returncode == 78
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and f"node name 'twin' is already running in {run_dir} (pid {first.pid})" in errors[0]
        assert first.poll() is None and (run_dir / "twin.pub").exists()  # the first keeps its endpoint
        assert stat_mode(run_dir) == 0o700
    finally:
        stop_process(first)
    assert first.returncode == 0


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- a launch split over hosts ---------------------------------------------------------------------
def test_the_two_hosts_example_lays_out_endpoints_from_the_file_alone(tmp_path):
    from perception.launch import build_graph, load_launch_file, network_settings, place_nodes, resolve_node_config

    spec = load_launch_file(REPO / "launch" / "two_hosts.yaml")
    graph = build_graph(spec, "two_hosts.yaml")
    typed = {n.name: resolve_node_config(n, "two_hosts.yaml", spec.budget_ms, graph)[1] for n in spec.nodes}
    placements = place_nodes(spec, graph, typed, tmp_path, "two_hosts.yaml")
    # Capture is read from compute (frames, heartbeats); compute's nodes from camera (capture waits for them).
    assert {n: (p.host, p.bind, p.key) for n, p in placements.items()} == {
        "capture": ("camera", "tcp://127.0.0.1:7100", "camera"),
        "detector": ("compute", "tcp://127.0.0.1:7101", "compute"),
        "decision": ("compute", "tcp://127.0.0.1:7102", "compute"),
        "watchdog": ("compute", "tcp://127.0.0.1:7103", "compute"),
    }
    told = network_settings(spec, placements, "watchdog", tmp_path / "keys")
    assert told["publish"] == "tcp://127.0.0.1:7103" and told["key"] == "compute" and not told["insecure"]
    # The nodes of the watchdog's heartbeats input resolve to where they publish, capture on the other host.
    assert told["peers"]["capture"] == {"endpoint": "tcp://127.0.0.1:7100", "key": "camera"}
    assert set(told["peers"]) >= {edge.node for edge in typed["watchdog"].node.edges["heartbeats"]}


def test_a_launch_split_over_hosts_refuses_a_bad_layout_with_one_line(tmp_path):
    from perception.config import ConfigError
    from perception.launch import Launcher, load_launch_file

    launch = write_two_hosts(tmp_path, [7200, 7201, 7202, 7203])
    result = run_python(["-m", "perception.cli", "launch", str(launch)])
    assert result.returncode == 78 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "splits its nodes over hosts camera, compute: start each part with --host NAME" in errors[0]
    spec = load_launch_file(launch)
    with pytest.raises(ConfigError, match="no host 'nowhere' \\(hosts: camera, compute\\)"):
        Launcher(spec, str(launch), host="nowhere")
    with pytest.raises(ConfigError, match="nodes\\[capture\\]: its frames are read by detector on compute, watchdog on "
                                          "compute, where its shared memory is not: set params: \\{transport: inline\\}"):
        Launcher(load_launch_file(write_two_hosts(tmp_path, [7200, 7201, 7202, 7203], transport="shm")), "split.yaml",
                 host="camera")
    with pytest.raises(ConfigError, match="nodes decision and watchdog both publish on tcp://127.0.0.1:7202"):
        Launcher(load_launch_file(write_two_hosts(tmp_path, [7200, 7201, 7202, 7202])), "split.yaml", host="camera")
    with pytest.raises(ConfigError, match="camera.key_secret: no secret key for 'camera'"):
        Launcher(spec, str(launch), host="camera")  # keys: keys does not exist yet
    insecure = tmp_path / "insecure.yaml"
    insecure.write_text(launch.read_text().replace("keys: keys\n", ""))
    with pytest.raises(ConfigError, match="node capture: tcp://127.0.0.1:7200 without CURVE keys"):
        Launcher(load_launch_file(insecure), "insecure.yaml", host="compute")


def test_a_clock_address_this_host_does_not_have_is_one_line_and_exit_78(tmp_path):
    """Only a taken clock port is waited out (tests/perception/test_reconnect.py). An address this
    host does not have is a config error, before any node starts; the launcher used to hang there
    without a word (its failed clock socket was never closed, so its ZeroMQ context never ended)."""
    from perception.security import create_keys

    launch = write_two_hosts(tmp_path, [free_port() for _ in range(4)])
    launch.write_text(launch.read_text().replace("camera: {address: 127.0.0.1", "camera: {address: 192.0.2.1"))
    create_keys(tmp_path / "keys", ["camera", "compute"])
    result = run_python(["-m", "perception.cli", "launch", str(launch), "--host", "camera"], timeout_s=30)
    assert result.returncode == 78 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "host camera: cannot serve its clock at tcp://192.0.2.1:" in errors[0], errors
    assert "started" not in result.stderr


def test_two_launchers_split_over_hosts_carry_decisions_end_to_end_with_curve(tmp_path):
    """Capture under one launcher (--host camera), detector, decision and watchdog under another
    (--host compute), on loopback with CURVE: decisions flow, the watchdog hears the remote capture's
    heartbeats and brakes when it dies, and both launchers stop cleanly."""
    import zmq

    from helpers import free_port
    from perception.clock import ClockConfig, ClockSync
    from perception.messages import Reason
    from perception.security import CurveClient, create_keys, load_identity, read_public_key
    from perception.topics import DECISIONS, WATCHDOG_STATUS
    from perception.transport import Subscriber

    ports = [free_port() for _ in range(4)]
    clock_ports = (free_port(), free_port())
    launch = write_two_hosts(tmp_path, ports, clock_ports=clock_ports)
    create_keys(tmp_path / "keys", ["camera", "compute"])
    status = {host: tmp_path / f"{host}.json" for host in ("camera", "compute")}
    launchers = {host: subprocess.Popen([sys.executable, "-m", "perception.cli", "launch", str(launch), "--host", host,
                                         "--status-file", str(status[host])], cwd=REPO, stderr=subprocess.PIPE, text=True)
                 for host in ("compute", "camera")}
    # An observer on the compute side, with compute's keys: decision and watchdog publish on tcp
    # (capture on camera waits for their heartbeats), so it reads them where camera would.
    context = zmq.Context()
    endpoints = [f"tcp://127.0.0.1:{port}" for port in ports[2:]]
    curve = CurveClient(load_identity(tmp_path / "keys", "compute"),
                        {e: read_public_key(tmp_path / "keys", "compute") for e in endpoints})
    decisions = Subscriber(context, endpoints, DECISIONS, False, curve=curve)
    statuses = Subscriber(context, endpoints[1], WATCHDOG_STATUS, False, curve=curve)
    # The observer is a third host: it converts compute's stamps with compute's clock server.
    compute_clock = f"tcp://127.0.0.1:{clock_ports[1]}"
    clocks = ClockSync(context, {"compute": compute_clock}, ClockConfig(period_s=0.1), curve=CurveClient(
        curve.identity, {compute_clock: read_public_key(tmp_path / "keys", "compute")}))
    decisions.clocks = statuses.clocks = clocks
    seen: dict[str, list] = {"decisions": [], "status": []}

    def collect(timeout_s: float = 0.2) -> None:
        for name, subscriber in (("decisions", decisions), ("status", statuses)):
            if subscriber.socket.poll(int(timeout_s * 500)):
                seen[name] += [(time.monotonic(), r.message) for r in subscriber.receive()]

    def wait(predicate, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            collect()
            if predicate():
                return True
        return False

    def by_decision_node(after: float) -> list:
        return [d for t, d in seen["decisions"] if t >= after and d.decided_by == "decision"]

    try:
        assert wait(lambda: len(by_decision_node(0)) >= 10, timeout_s=90), \
            "no decisions reached the observer:\n" + "".join(p.stderr.read() if p.poll() is not None else ""
                                                            for p in launchers.values())
        frame_ids = [d.frame_id for d in by_decision_node(0)]
        assert frame_ids == sorted(frame_ids)
        # Past the watchdog's 2 s start-up grace, capture (on the other host) is heard: nobody is down.
        first_status = seen["status"][0][0]
        assert wait(lambda: seen["status"][-1][0] > first_status + 3.0, timeout_s=10)
        assert seen["status"][-1][1].nodes_down == ()

        # Kill capture on camera: the watchdog on compute brakes naming it; camera's launcher restarts it.
        capture = node_row(read_status(status["camera"]), "capture")
        killed_at = time.monotonic()
        os.kill(capture["pid"], signal.SIGKILL)
        assert wait(lambda: any(d.reason == Reason.NODE_DOWN and "capture" in d.detail
                                for t, d in seen["decisions"] if t >= killed_at), timeout_s=5)
        assert wait(lambda: (s := read_status(status["camera"])) and node_row(s, "capture")["restarts"] == 1, 10)
        assert wait(lambda: len(by_decision_node(time.monotonic() - 0.5)) > 0 and seen["status"][-1][1].nodes_down == (),
                    timeout_s=30), "decisions did not resume after capture's restart"
        assert {r["name"] for r in read_status(status["compute"])["nodes"]} == {"detector", "decision", "watchdog"}
        assert all(r["restarts"] == 0 for r in read_status(status["compute"])["nodes"])
        # Each launcher hears its own nodes (stamped with its host's clock), so it never takes them for hung.
        assert all(r["node_state"] == "ok" and r["heartbeat_age_ms"] < 1000
                   for host in status for r in read_status(status[host])["nodes"])
    finally:
        decisions.close()
        statuses.close()
        clocks.close()
        context.term()
        started = time.monotonic()
        for process in launchers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = {host: process.communicate(timeout=10)[1] for host, process in launchers.items()}
        stopped_s = time.monotonic() - started
    assert stopped_s < 3.0
    for host, process in launchers.items():
        assert process.returncode == 0, outputs[host]
        assert "all nodes stopped" in outputs[host]


def test_the_restart_delay_doubles_in_a_row_and_starts_again_after_a_node_ran_stably(tmp_path):
    """Issue 16, found by the soak: the delay doubled with every restart a node ever had and never
    came back down, so after four crashes, however far apart, every later one left the node down
    for the 5 s cap (a 10-minute soak's recoveries took 5.4-7.5 s at p50), and max_restarts gave up
    on a node that had crashed that often in a whole day. Now both count restarts in a row."""
    from types import SimpleNamespace

    from perception.launch import STABLE_AFTER_S, Launcher, load_launch_file
    from perception.latency import now_ns
    from perception.messages import Heartbeat, NodeState

    (tmp_path / "monitor.yaml").write_text("node: {}\n")
    launch = tmp_path / "one.yaml"
    launch.write_text(f"{NOBODY}nodes:\n  - {{name: monitor, node: monitor, config: monitor.yaml, restart_delay_s: 0.1, "
                      "max_restarts: 3, inputs: {frames: nobody/frames}}\n")
    launcher = Launcher(load_launch_file(launch), str(launch))
    managed = launcher.nodes[0]
    beat = Heartbeat(frame_id=0, capture_ns=0, node="monitor", pid=1, seq=1, sent_ns=1, state=NodeState.OK)

    def crash(after_s: float, heartbeat: bool = True) -> float | None:
        """The node ran `after_s` since its start, then died: the delay before its restart."""
        managed.state, managed.process = "running", SimpleNamespace(pid=2**22 + 1)
        managed.started_ns, managed.heartbeat = now_ns() - int(after_s * 1e9), beat if heartbeat else None
        launcher._on_exit(managed, -9)
        return round((managed.restart_at_ns - now_ns()) / 1e9, 1) if managed.state == "restarting" else None

    try:
        assert [crash(1.0), crash(1.0), crash(STABLE_AFTER_S + 1, heartbeat=False)] == [0.1, 0.2, 0.4]
        assert crash(1.0) is None and managed.state == "failed"  # 3 in a row: given up
        managed.in_a_row = 2
        assert [crash(STABLE_AFTER_S + 1), crash(1.0), crash(STABLE_AFTER_S + 1)] == [0.1, 0.2, 0.1]
        assert managed.restarts == 6  # the status still counts them all
    finally:
        managed.process = None
        launcher.stop()
        launcher._context.term()
