"""What every node shares: waiting for the rest of the pipeline before the first frame."""

import subprocess
import sys
import time

from helpers import REPO, stop_process
from perception.node import Node, NodeSettings, RunContext


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
