"""What every node shares: waiting for the rest of the pipeline before the first frame."""

import subprocess
import sys
import time

from helpers import REPO, stop_process
from perception.node import Node, NodeSettings, RunContext
from perception.topics import HEARTBEAT


def test_wait_for_nodes_returns_when_each_named_node_runs_and_names_the_silent_ones(tmp_path, run_dir):
    (tmp_path / "monitor.yaml").write_text("frames_from: 'ipc://{run_dir}/nobody.pub'\n")
    monitor = subprocess.Popen([sys.executable, "-m", "nodes.monitor", "--name", "monitor", "--config",
                                str(tmp_path / "monitor.yaml")], cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        with Node("capture", NodeSettings(), RunContext.from_env()) as node:
            assert node.wait_for_nodes(["monitor"], timeout_s=60) == []
            started = time.monotonic()
            assert node.wait_for_nodes(["ghost", "monitor"], timeout_s=0.5) == ["ghost"]
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

    (tmp_path / "monitor.yaml").write_text("node: {heartbeat_period_ms: 20}\nframes_from: 'ipc://{run_dir}/nobody.pub'\n")
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
