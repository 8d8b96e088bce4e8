"""The graph, declared once in the launch file (perception.graph): every edge checked against the node
modules' ports before anything starts, and what the rest of the runtime derives from it."""

import dataclasses

import pytest

from perception import REPO
from perception.config import ConfigError
from perception.graph import every_output
from perception.launch import Launcher, build_graph, load_launch_file, resolve_node_config
from perception.topics import DECISIONS, FRAMES, HEARTBEAT

REPLAY = REPO / "launch/replay.yaml"


def replace_node(spec, name: str, **changes):
    return dataclasses.replace(spec, nodes=[dataclasses.replace(n, **changes) if n.name == name else n for n in spec.nodes])


@pytest.mark.parametrize("launch_file", ["launch/replay.yaml", "launch/vehicle.yaml", "launch/two_hosts.yaml"])
def test_the_shipped_launches_declare_every_edge_and_their_graph_checks(launch_file):
    spec = load_launch_file(REPO / launch_file)
    graph = build_graph(spec, launch_file)
    assert graph.read_from("watchdog") == {"capture", "detector", "decision"}
    assert graph.readers("capture", "frames") == ["detector", "watchdog"]
    assert graph.readers("watchdog", "control", listeners=False) == ["detector"]
    assert [str(e) for e in graph.publishers(DECISIONS)] == ["decision/decisions", "watchdog/decisions"]
    assert len(graph.publishers(HEARTBEAT)) == len(spec.nodes)


@pytest.mark.parametrize("node, change, message", [
    ("detector", {"inputs": {"frames": "captrue/frames"}},
     "nodes[detector].inputs.frames: captrue/frames: 'captrue' is no node of this launch (its nodes: capture, decision, "
     "detector, watchdog)"),
    ("detector", {"inputs": {"frames": "decision/decisions"}},
     "nodes[detector].inputs.frames: decision/decisions carries /decisions, the input takes /frames"),
    ("detector", {"inputs": {"frame": "capture/frames"}},
     "nodes[detector].inputs: 'frame' is not an input of its node module (it has: frames, control)"),
    ("decision", {"inputs": {}}, "nodes[decision].inputs: detections not connected (as `detections: node/output`)"),
    ("detector", {"inputs": {"frames": "capture/frames", "control": "decision/control"}},
     "nodes[detector].inputs.control: decision/control: decision does not declare output 'control' (its outputs: "
     "decisions)"),
    ("capture", {"outputs": ["detections"]},
     "nodes[capture].outputs: 'detections' is not an output of its node module (it has: frames, heartbeat)"),
])
def test_a_wrong_edge_is_one_line_naming_it_before_anything_starts(node, change, message):
    spec = replace_node(load_launch_file(REPLAY), node, **change)
    with pytest.raises(ConfigError) as error:
        Launcher(spec, "replay.yaml")
    assert str(error.value) == f"replay.yaml: {message}"


def test_an_edge_that_is_not_node_slash_output_is_refused_when_the_launch_file_is_read(tmp_path):
    launch = tmp_path / "bad.yaml"
    launch.write_text(REPLAY.read_text().replace("detections: detector/detections\n    outputs: [decisions]",
                                                 "detections: detector\n    outputs: [decisions]"))
    (tmp_path / "configs").symlink_to(REPO / "configs")
    with pytest.raises(ConfigError, match=r"nodes\[decision\]: 'detector' is not node/output"):
        load_launch_file(launch)


def test_a_node_config_may_not_declare_its_own_edges_under_a_launch(tmp_path):
    config = tmp_path / "decision.yaml"
    config.write_text("node: {inputs: {detections: [detector/detections]}}\n")
    spec = replace_node(load_launch_file(REPLAY), "decision", config=config)
    with pytest.raises(ConfigError, match=r"nodes\[decision\]: node.inputs comes from the launch file's graph"):
        Launcher(spec, "replay.yaml")


def test_each_node_is_handed_its_edges_and_the_readers_that_act_on_its_outputs():
    spec = load_launch_file(REPLAY)
    graph = build_graph(spec, "replay.yaml")
    watchdog = next(n for n in spec.nodes if n.name == "watchdog")
    _, typed = resolve_node_config(watchdog, "replay.yaml", spec.budget_ms, graph)
    assert typed.node.inputs["heartbeats"] == ["capture/heartbeat", "detector/heartbeat", "decision/heartbeat"]
    assert typed.node.readers == {"decisions": [], "status": [], "control": ["detector"]}


def test_a_recorder_or_live_view_reads_every_output_and_is_no_reader_that_acts():
    spec = load_launch_file(REPLAY)
    inputs = every_output(spec.nodes)
    assert inputs["frames"] == ["capture/frames"] and inputs["status"] == ["watchdog/status"]
    from perception.launch import LaunchNode

    recorder = LaunchNode(name="recorder", node="recorder", config=REPO / "configs/recorder.yaml", inputs=inputs,
                          params={"output": "x.mcap"})
    graph = build_graph(dataclasses.replace(spec, nodes=[*spec.nodes, recorder]), "replay.yaml")
    assert graph.readers("watchdog", "control") == ["detector", "recorder"]
    assert graph.readers("watchdog", "control", listeners=False) == ["detector"]
    assert [str(e) for e in graph.publishers(FRAMES)] == ["capture/frames"]
