"""The decision node's body, in-process (perception.testing): inputs fed, outputs collected."""

import numpy as np

from nodes.decision import DecisionConfig, decide
from perception.config import from_mapping
from perception.latency import now_ns
from perception.messages import Action, Detections, Reason
from perception.testing import TestingNode
from perception.topics import DECISIONS, DETECTIONS
from samples import forged

W, H = 1280, 720
PERSON = 0


def detections(frame_id: int, capture_ns: int, *boxes: tuple[float, float, float, float]) -> Detections:
    return Detections(frame_id=frame_id, capture_ns=capture_ns, media_ns=frame_id * 40_000_000, image_width=W,
                      image_height=H, exit_index=0, exit_count=1, boxes=np.array(boxes, np.float32).reshape(-1, 4),
                      scores=np.full(len(boxes), 0.9, np.float32), class_ids=np.full(len(boxes), PERSON, np.uint16))


def test_a_person_close_in_the_path_is_a_brake_and_stale_or_malformed_input_is_dropped_and_counted():
    node = TestingNode("decision")
    now = now_ns()
    close_person = (W * 0.45, H * 0.4, W * 0.55, H * 0.95)
    node.feed(DETECTIONS, detections(1, now, close_person))
    node.feed(DETECTIONS, detections(2, now - 500_000_000, close_person))  # older than the 100 ms budget
    node.feed_raw(DETECTIONS, forged(detections(3, now), image_width=0))  # crashed the node before
    node.feed(DETECTIONS, detections(4, now))
    decide(node, from_mapping(DecisionConfig, {}))
    decisions = node.published(DECISIONS)
    assert [(d.frame_id, d.action, d.reason) for d in decisions] == [
        (1, Action.BRAKE, Reason.OBJECT_IN_PATH), (4, Action.BRAKE, Reason.OBJECT_IN_PATH)]  # 4: held, hysteresis
    assert "holding BRAKE" in decisions[1].detail
    assert node.counters["detections.stale"] == 1 and node.inputs[DETECTIONS].malformed == 1
    assert node.frames_done[-1] == (4, now)
