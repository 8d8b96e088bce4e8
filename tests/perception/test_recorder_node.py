"""The recorder node's body, in-process (perception.testing): it records what its launch entry
connects (`perception record`: every output of the launch), written with the views Foxglove draws."""

import dataclasses
import json
from pathlib import Path

import pytest

from nodes.recorder import RecorderConfig, record
from perception import REPO
from perception.config import ConfigError, from_mapping
from perception.graph import every_output
from perception.launch import build_graph, load_launch_file
from perception.pipeline import pipeline_launch
from perception.latency import now_ns
from perception.messages import Action, Decision, Reason
from perception.node import FatalInputError
from perception.recording_reader import RecordingReader
from perception.testing import TestingNode
from perception.topics import CONTROL, DECISIONS, DETECTIONS, WATCHDOG_STATUS
from samples import all_messages


def test_perception_record_connects_every_output_of_the_launch_from_every_publisher():
    spec = pipeline_launch({"kind": "video", "path": "clip.mp4"}, record_to=Path("drive.mcap"))
    recorder = next(n for n in spec.nodes if n.name == "recorder")
    assert recorder.inputs == {
        "frames": ["capture/frames"], "detections": ["detector/detections"],
        "decisions": ["decision/decisions", "watchdog/decisions"], "status": ["watchdog/status"],
        "control": ["watchdog/control"],
        "heartbeat": ["capture/heartbeat", "detector/heartbeat", "decision/heartbeat", "watchdog/heartbeat"]}
    frames_only = pipeline_launch({"kind": "video", "path": "clip.mp4"}, record_to=Path("drive.mcap"), pipeline=False)
    assert frames_only.nodes[-1].inputs == {"frames": ["capture/frames"], "heartbeat": ["capture/heartbeat"]}


def test_a_recorder_reading_an_output_nobody_declares_is_one_line_before_start(tmp_path):
    spec = pipeline_launch({"kind": "video", "path": "clip.mp4"}, record_to=tmp_path / "drive.mcap")
    recorder = dataclasses.replace(spec.nodes[-1], inputs={"status": "decision/status"})
    with pytest.raises(ConfigError) as error:
        build_graph(dataclasses.replace(spec, nodes=[*spec.nodes[:-1], recorder]), "record")
    assert str(error.value) == ("record: nodes[recorder].inputs.status: decision/status: decision does not declare "
                                "output 'status' (its outputs: decisions)")


def test_what_arrives_is_recorded_with_annotations_and_latency_up_to_its_receipt(tmp_path):
    output = tmp_path / "drive.mcap"
    node = TestingNode("recorder", inputs=every_output(load_launch_file(REPO / "launch/replay.yaml").nodes))
    samples = all_messages()
    captured = now_ns() - 30_000_000  # a decision made 30 ms after its frame's capture
    decision = Decision(frame_id=7, capture_ns=captured, action=Action.SLOW, reason=Reason.OBJECT_IN_PATH,
                        decided_by="decision")
    # in the table's order: the recorder reads its inputs in that order when all have input
    fed = [(DETECTIONS, samples[1]), (DECISIONS, decision), (WATCHDOG_STATUS, samples[6]), (CONTROL, samples[7])]
    for topic, message in fed:
        node.feed(topic, message)
    record(node, from_mapping(RecorderConfig, {"output": str(output)}))
    received = now_ns()

    reader = RecordingReader(output)
    assert [(t, m) for t, _, m in reader.messages()] == fed
    assert node.counters == {"detections.written": 1, "decisions.written": 1, "watchdog.control.written": 1,
                             "watchdog.status.written": 1}
    records = {channel: data for channel, _, data in reader.records()}
    assert {"/camera/annotations", "/latency", "/log"} <= set(records)
    latency = json.loads(records["/latency"])
    assert 30.0 <= latency["end_to_end_ms"] <= (received - captured) / 1e6 and latency["action"] == "SLOW"


def test_a_compression_this_python_cannot_write_is_a_config_error(tmp_path, monkeypatch):
    import mcap.writer

    monkeypatch.setattr(mcap.writer, "zstandard", None)  # as where the package is missing or does not import
    with pytest.raises(ValueError, match="compression zstd: its MCAP chunks need the zstandard package"):
        from_mapping(RecorderConfig, {"output": str(tmp_path / "drive.mcap")})


def test_an_unreadable_class_list_stops_the_node_before_a_file_is_made(tmp_path):
    config = from_mapping(RecorderConfig, {"output": str(tmp_path / "drive.mcap"),
                                           "classes_file": str(tmp_path / "missing.txt")})
    with pytest.raises(FatalInputError, match=r"classes_file: cannot read .*missing.txt \(No such file"):
        record(TestingNode("recorder"), config)
    assert not (tmp_path / "drive.mcap").exists()
