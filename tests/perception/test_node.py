"""What every node shares: waiting for the rest of the pipeline before the first frame."""

import subprocess
import sys
import time

from helpers import REPO, stop_process
from perception.node import Node, NodeSettings, RunContext
from perception.topics import HEARTBEAT


def test_wait_for_nodes_returns_when_each_named_node_runs_and_names_the_silent_ones(tmp_path, run_dir):
    (tmp_path / "monitor.yaml").write_text("frames_from: nobody\n")
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

    (tmp_path / "monitor.yaml").write_text("node: {heartbeat_period_ms: 20}\nframes_from: nobody\n")
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


def test_sleep_until_survives_a_heartbeat_falling_due_between_two_clock_reads(run_dir, monkeypatch):
    """Issue 16 item 7: the heartbeat is due by the time sleep_until reads the clock again, which
    made it sleep a negative time (ValueError) and killed capture in ordinary runs."""
    import perception.node as node_module

    with Node("capture", NodeSettings(heartbeat_period_ms=10), RunContext.from_env()) as node:
        start = node_module.now_ns()
        ticks = iter(range(1000))

        def clock() -> int:  # every read 11 ms after the one before: past the heartbeat the read before set
            return start + next(ticks) * 11_000_000

        monkeypatch.setattr(node_module, "now_ns", clock)
        node.sleep_until(start + 100_000_000)  # raised ValueError: sleep length must be non-negative
        monkeypatch.undo()
