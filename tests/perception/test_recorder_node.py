"""The recorder node's body, in-process (perception.testing): its sources come from the topic table,
and what it receives is written with the views Foxglove draws."""

import json

import pytest

from nodes.recorder import RecorderConfig, record
from perception.config import ConfigError, from_mapping
from perception.latency import now_ns
from perception.messages import Action, Decision, Reason
from perception.node import FatalInputError
from perception.recording import RecordingReader
from perception.testing import TestingNode
from perception.topics import CONTROL, DECISIONS, DETECTIONS, HEARTBEAT, PIPELINE_NODES, TOPICS, WATCHDOG_STATUS
from samples import all_messages


def test_by_default_every_topic_of_the_table_is_recorded_from_every_publisher():
    sources = from_mapping(RecorderConfig, {"output": "drive.mcap"}).sources
    assert sources == {t.name: list(t.publishers) for t in TOPICS}
    assert sources[HEARTBEAT.name] == list(PIPELINE_NODES) and sources[DECISIONS.name] == ["decision", "watchdog"]


def test_an_unknown_topic_is_one_line_naming_the_known_ones():
    with pytest.raises(ConfigError) as error:
        from_mapping(RecorderConfig, {"output": "drive.mcap", "sources": {"/watchdog": ["watchdog"]}}, "recorder.yaml")
    assert "\n" not in str(error.value)
    assert "sources: unknown topic '/watchdog' (known: /frames, /detections, /decisions, /watchdog/status, " \
           "/watchdog/control, /heartbeat)" in str(error.value)


def test_what_arrives_is_recorded_with_annotations_and_latency_up_to_its_receipt(tmp_path):
    output = tmp_path / "drive.mcap"
    node = TestingNode("recorder")
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


def test_an_unreadable_class_list_stops_the_node_before_a_file_is_made(tmp_path):
    config = from_mapping(RecorderConfig, {"output": str(tmp_path / "drive.mcap"),
                                           "classes_file": str(tmp_path / "missing.txt")})
    with pytest.raises(FatalInputError, match=r"missing.txt: cannot read the class names \(No such file"):
        record(TestingNode("recorder"), config)
    assert not (tmp_path / "drive.mcap").exists()
