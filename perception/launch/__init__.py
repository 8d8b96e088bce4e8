"""Start, supervise and stop a set of node processes described by a launch file.

    perception launch launch/replay.yaml [--duration S] [--status-file F]
    perception launch launch/two_hosts.yaml --host camera [--keys DIR]   # one host's part of a split launch

Before starting anything, every node's config (with its launch params merged in) is validated
against the node's CONFIG type, so a misspelled key fails the launch, not a node at 2 a.m.
Crashed nodes are restarted per their policy with a growing delay. A hung node (alive, but its
heartbeat older than `hang_timeout_s`, or no first heartbeat within `startup_timeout_s`) is killed
and restarted the same way, like openpilot's manager does, while the watchdog keeps braking.
Ctrl-C or SIGTERM stops all nodes within stop_timeout_s (SIGTERM, then SIGKILL), then removes the
run's ipc sockets and any shared memory a killed node left behind. Before it signals a node the
launcher leaves a stop order in the run directory: only a node stopped that way (or one that
finished its input) leaves quietly; any other exit is a node down for the watchdog.

The run directory is private (0700) and records its launcher's pid: a later launch removes run
directories, and their shared memory, whose launcher is gone (killed with SIGKILL, say). Children
also die with the launcher (PR_SET_PDEATHSIG).

Across hosts: a launch file may list `hosts` and put each node on one (`host: NAME`); each host
runs its part with `--host NAME`, every part reading the same launch file. A node that a node on
another host reads from (an edge of the launch file's graph, perception.graph, comes from it)
publishes on tcp://{its host's address}:{its port} (`port`, default base_port + its index in the
file), as a CURVE server when the launch has `keys` (perception.security); every node is told where
those nodes are (PERCEPTION_NETWORK, perception.node.with_launch_network). Every other node stays on
ipc. The layout is computed from the file alone, so both parts agree on it.
"""

from perception.launch.failsafe import FAILSAFE_HOLD_S
from perception.launch.placement import Placement, clock_endpoints, network_settings, place_nodes
from perception.launch.process import STABLE_AFTER_S, ManagedNode, apply_scheduling
from perception.launch.spec import (
    MAX_RESTART_DELAY_S, HostSpec, LaunchFile, LaunchNode, build_graph, load_launch_file, node_config_text, node_module,
    resolve_launch,
    resolve_node_config,
)
from perception.launch.supervisor import Launcher

__all__ = [
    "FAILSAFE_HOLD_S", "MAX_RESTART_DELAY_S", "STABLE_AFTER_S", "HostSpec", "LaunchFile", "LaunchNode", "Launcher",
    "ManagedNode", "Placement", "apply_scheduling", "build_graph", "clock_endpoints", "load_launch_file",
    "network_settings", "node_config_text", "node_module", "place_nodes", "resolve_launch", "resolve_node_config",
]
