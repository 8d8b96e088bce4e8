"""What every node shares: inputs resolved from the launch file's edges, waiting for the rest of the
pipeline before the first frame."""

import subprocess
import sys
import time

from helpers import REPO, stop_process
from perception.node import Node, NodeSettings, RunContext
from perception.topics import HEARTBEAT


def test_wait_for_nodes_returns_when_each_node_of_an_input_runs_and_names_the_silent_ones(tmp_path, run_dir):
    (tmp_path / "monitor.yaml").write_text("node: {inputs: {frames: [nobody/frames]}}\n")
    monitor = subprocess.Popen([sys.executable, "-m", "nodes.monitor", "--name", "monitor", "--config",
                                str(tmp_path / "monitor.yaml")], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        inputs = {"ready": ["monitor/heartbeat"], "both": ["ghost/heartbeat", "monitor/heartbeat"]}
        with Node("capture", NodeSettings(inputs=inputs), RunContext.from_env()) as node:
            assert node.wait_for_nodes("ready", timeout_s=60) == []
            started = time.monotonic()
            assert node.wait_for_nodes("both", timeout_s=0.5) == ["ghost"]
            assert time.monotonic() - started < 5  # the timeout holds; it does not wait forever
            assert node._subscribers == []  # the heartbeat subscriptions made for waiting are closed
    finally:
        stop_process(monitor)
    assert monitor.returncode == 0


def test_only_an_ordered_stop_is_quiet_any_other_signal_is_a_failure(tmp_path, run_dir):
    import zmq

    from helpers import wait_for
    from perception.messages import NodeState
    from perception.transport import Subscriber, resolve_endpoint

    (tmp_path / "monitor.yaml").write_text("node: {heartbeat_period_ms: 20, inputs: {frames: [nobody/frames]}}\n")
    command = [sys.executable, "-m", "nodes.monitor", "--name", "monitor", "--config", str(tmp_path / "monitor.yaml")]
    context = zmq.Context()
    beats = Subscriber(context, resolve_endpoint("monitor", run_dir), HEARTBEAT, latest=False)
    try:
        for ordered, code, last_state in ((False, 143, NodeState.FAILED), (True, 0, NodeState.STOPPING)):
            monitor = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
            seen: list = []
            assert wait_for(lambda: seen.extend(r.message for r in beats.receive()) or seen, timeout_s=30)
            stop_process(monitor, ordered=ordered)
            wait_for(lambda: seen.extend(r.message for r in beats.receive()) or seen[-1].state == last_state, 3)
            assert monitor.returncode == code and seen[-1].state == last_state
            if not ordered:
                assert "stopped by a signal the launcher did not order" in monitor.stderr.read()
            (run_dir / "monitor.stop").unlink(missing_ok=True)
    finally:
        beats.close()
        context.term()


def test_sleep_until_survives_being_descheduled_past_its_next_heartbeat(run_dir, monkeypatch):
    """Issue 16, found by the soak: a node descheduled between its heartbeat check and reading the
    clock found its next heartbeat already past, asked time.sleep for a negative time and died
    (ValueError, exit 1). The capture crashed so twice in a 10-minute soak on a loaded machine."""
    import perception.node as node_module

    with Node("capture", NodeSettings(heartbeat_period_ms=50), RunContext.from_env()) as node:
        node.heartbeat(force=True)
        due = node._next_heartbeat_ns
        readings = iter([due - 1, due + 1_000_000])  # heartbeat(): not due yet; then the clock, read 1 ms past it
        monkeypatch.setattr(node_module, "now_ns", lambda: next(readings, None) or time.monotonic_ns())
        node.sleep_until(due + 20_000_000)
        assert time.monotonic_ns() >= due + 20_000_000


def test_an_input_is_resolved_from_its_edges_and_a_missing_or_mistyped_one_is_one_line(run_dir):
    import pytest

    from perception.config import ConfigError
    from perception.topics import DECISIONS, FRAMES

    inputs = {"frames": ["capture/frames", "spare/frames"], "decisions": ["decision/decisions"]}
    with Node("detector", NodeSettings(inputs=inputs), RunContext.from_env()) as node:
        frames = node.subscribe("frames", FRAMES, latest=True)
        assert frames.endpoints == [f"ipc://{run_dir}/capture.pub", f"ipc://{run_dir}/spare.pub"]
        assert node.input_publishers("frames") == ["capture", "spare"]
        assert node.subscribe("control", DECISIONS, latest=False, optional=True) is None
        with pytest.raises(ConfigError, match=r"^node detector: input 'control' is not connected \(inputs: control: node/output\)$"):
            node.subscribe("control", DECISIONS, latest=False)
        with pytest.raises(ConfigError, match=r"^node detector: input decisions takes /frames, not decision/decisions$"):
            node.subscribe("decisions", FRAMES, latest=False)


def test_a_malformed_edge_in_a_node_config_is_refused_naming_it():
    import pytest

    from perception.config import ConfigError, from_mapping

    for inputs, message in (({"frames": ["capture"]}, "'capture' is not node/output"),
                            ({"frames": ["capture/pixels"]}, "unknown output 'pixels'"),
                            ({"frames": ["capture/frames", "detector/detections"]}, "carry different topics")):
        with pytest.raises(ConfigError, match=message):
            from_mapping(NodeSettings, {"inputs": inputs}, "monitor.yaml")
