"""Risk is what the decision node would act on, a margin ahead of its thresholds; not anything in a trapezoid."""

from pathlib import Path

import numpy as np
import pytest

from perception.detection.outputs import Output
from perception.detection.risk import RiskConfig, RiskRules

NAMES = [line.strip() for line in (Path(__file__).resolve().parents[3] / "perception/weights/coco_classes.txt").read_text().splitlines()]
CAR = NAMES.index("car")
W, H = 640, 360
FRAME_NS = 100_000_000


def car(box) -> Output:
    return Output(np.array([box], np.float32), np.array([0.9], np.float32), np.array([CAR], np.uint16),
                  np.array([3], np.uint32), np.zeros((1, 2), np.float32))


def assess(boxes) -> list:
    rules = RiskRules(RiskConfig(), NAMES)
    return [rules.assess(car(box), W, H, step * FRAME_NS, None, False) for step, box in enumerate(boxes)]


@pytest.mark.parametrize("case, boxes, why, in_path", [
    # growing 10% a frame (time to collision about 1 s): the decision node brakes; risk long before
    ("closing in the path", [(310, 262 - 14 * 1.1 ** s, 330, 262) for s in range(8)], "closing", True),
    # 0.12 of the height: below the decision node's 0.15, above 0.15 / 1.5
    ("nearly near in the path", [(300, 300 - 43, 340, 300)] * 8, "near", True),
    ("far in the path, keeping its distance", [(310, 250, 330, 264)] * 8, None, True),
    ("beside the path, closing", [(560, 262 - 14 * 1.1 ** s, 600, 262) for s in range(8)], None, False),
])
def test_risk_is_a_relevant_object_in_the_path_that_is_closing_or_near(case, boxes, why, in_path):
    last = assess(boxes)[-1]
    assert last.in_path == in_path, case
    assert (why in last.why) if why else last.why is None, (case, last)


def test_risk_begins_a_margin_before_the_decision_node_would_slow():
    """Growing 4% a frame at 10 fps: time to collision about 2.5 s. The decision node's SLOW
    (slow_ttc_s 4 s) and risk (up to 6 s) agree; at 2% a frame (5 s) only risk fires."""
    for growth, risky in ((1.04, True), (1.02, True), (1.005, False)):
        last = assess([(310, 262 - 20 * growth ** s, 330, 262) for s in range(8)])[-1]
        assert (last.why is not None) == risky, growth


def test_a_static_camera_has_no_risk_rule_and_a_class_the_model_lacks_is_named():
    assert RiskRules.of(RiskConfig(ego_path=False), NAMES) is None
    with pytest.raises(ValueError, match=r"\['unicorn'\] are not classes of the detector"):
        RiskRules.of(RiskConfig(rules=RiskConfig().rules.__class__(classes=["car", "unicorn"])), NAMES)


def test_a_change_of_pass_is_not_taken_for_closing():
    """The detector's risk rule fits growth within a network pass, as the decision node does: a car
    keeping its distance, drawn 18% shorter by exit 0 on its first frames, is no risk; fitted across
    passes (no pass known) the step would read as closing."""
    from perception.messages import NetworkPass

    full, shallow = NetworkPass(512, 288, 1), NetworkPass(512, 288, 0)
    boxes = [(310, 264 - 14 * (0.82 if step < 4 else 1.0), 330, 264) for step in range(8)]
    for passes, why in (([shallow] * 4 + [full] * 4, None), ([None] * 8, "closing")):
        rules = RiskRules(RiskConfig(), NAMES)
        last = [rules.assess(car(box), W, H, step * FRAME_NS, measured_by, False)
                for step, (box, measured_by) in enumerate(zip(boxes, passes))][-1]
        assert last.in_path and ((why in last.why) if why else last.why is None), (passes[0], last)
