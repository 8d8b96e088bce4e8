"""Properties of the decision geometry that must hold for every box, not only the ones written down:
a relevant object in the ego path that is close (tall, or cut off by the frame's bottom edge) is
never PROCEED whatever else is in view, and more objects never make a decision calmer."""

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception.decision import DecisionMaker, DecisionRules, fraction_in_polygon, shares_in_path
from perception.messages import Action, Detections

NAMES = [line.strip() for line in (Path(__file__).resolve().parents[2] / "perception/weights/coco_classes.txt").read_text().splitlines()]
RULES = DecisionRules()
RELEVANT = [NAMES.index(c) for c in RULES.classes]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.tuples(st.integers(64, 4096), st.integers(64, 4096))
unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def any_box(draw, width: int, height: int):
    """(class, score, box) anywhere in the frame, boxes clipped to it as the detector clips them."""
    x1, x2 = sorted(draw(st.tuples(unit, unit)))
    y1, y2 = sorted(draw(st.tuples(unit, unit)))
    return (draw(st.integers(0, len(NAMES) - 1)), draw(unit), (x1 * width, y1 * height, x2 * width, y2 * height))


def path_row(y: float) -> tuple[float, float]:
    """The default ego path's extent at row y (a trapezoid: its left and right edges are straight)."""
    (tlx, ty), (trx, _), (brx, by), (blx, _) = RULES.roi
    t = (y - ty) / (by - ty)
    return tlx + t * (blx - tlx), trx + t * (brx - trx)


@st.composite
def close_in_path(draw, width: int, height: int):
    """A relevant, confident box whose bottom edge lies inside the path, tall enough to brake for or cut
    off by the frame's bottom edge."""
    cut_off = draw(st.booleans())
    bottom = 1.0 if cut_off else draw(st.floats(RULES.roi[0][1] + RULES.brake_height + 1e-4, 1.0))
    left, right = path_row(min(bottom, 1.0))
    x1 = draw(st.floats(left, (left + right) / 2))
    x2 = draw(st.floats(max(x1, (left + right) / 2), right))
    box_height = draw(st.floats(0.01 if cut_off else RULES.brake_height + 1e-4, bottom))  # clear of float32 rounding
    return (draw(st.sampled_from(RELEVANT)), draw(st.floats(RULES.min_score, 1.0)),
            (x1 * width, (bottom - box_height) * height, x2 * width, bottom * height))


def detections(width: int, height: int, objects: list) -> Detections:
    return Detections(
        frame_id=1, capture_ns=1, media_ns=1, image_width=width, image_height=height, exit_index=0, exit_count=1,
        boxes=np.array([o[2] for o in objects], np.float32).reshape(-1, 4),
        scores=np.array([o[1] for o in objects], np.float32), class_ids=np.array([o[0] for o in objects], np.uint16),
        track_ids=np.arange(1, len(objects) + 1, dtype=np.uint32),
    )


def verdict(width: int, height: int, objects: list) -> Action:
    return DecisionMaker(RULES, NAMES).decide(detections(width, height, objects), 10).action


@PROPERTY
@given(data=st.data(), size=sizes)
def test_a_close_object_in_the_path_is_a_brake_whatever_else_is_in_view(data, size):
    width, height = size
    target = data.draw(close_in_path(width, height))
    others = data.draw(st.lists(any_box(width, height), max_size=6))
    objects = data.draw(st.permutations([target, *others]))
    assert verdict(width, height, objects) == Action.BRAKE, target


@PROPERTY
@given(data=st.data(), size=sizes)
def test_more_objects_never_make_a_decision_calmer(data, size):
    width, height = size
    seen = data.draw(st.lists(any_box(width, height), max_size=5))
    more = data.draw(st.lists(any_box(width, height), min_size=1, max_size=5))
    assert verdict(width, height, seen + more) >= verdict(width, height, seen)


@PROPERTY
@given(x1=unit, x2=unit, y=st.floats(-0.5, 1.5, allow_nan=False))
def test_the_share_of_a_segment_in_the_path_is_a_fraction_and_the_bottom_row_counts(x1, x2, y):
    x1, x2 = sorted((x1, x2))
    roi = np.array(RULES.roi)
    share = fraction_in_polygon(x1, x2, y, roi)
    assert 0.0 <= share <= 1.0
    if y == 1.0 and path_row(1.0)[0] <= x1 and x2 <= path_row(1.0)[1]:
        assert share == 1.0
    if y > 1.0 or y < RULES.roi[0][1]:
        assert share == 0.0


@PROPERTY
@given(data=st.data(), size=sizes)
def test_a_frames_boxes_judged_together_get_the_shares_each_gets_alone(data, size):
    """The path test runs on every box of a frame at once: no box's share may depend on the others."""
    width, height = size
    boxes = np.array([box for _, _, box in data.draw(st.lists(any_box(width, height), max_size=12))]).reshape(-1, 4)
    roi = np.array(RULES.roi)
    together = shares_in_path(boxes, width, height, roi)
    alone = [shares_in_path(box[None], width, height, roi)[0] for box in boxes]
    assert together.tolist() == alone
