import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from perception.decision import DecisionMaker, DecisionRules, fraction_in_polygon
from perception.detection.network import StagedNetwork
from perception.detection.manifest import load_manifest
from perception.engines import EngineConfig, create_engine
from perception.messages import Action, Detections, NetworkPass, Reason

NAMES = [line.strip() for line in (Path(__file__).resolve().parents[2] / "perception/weights/coco_classes.txt").read_text().splitlines()]
PERSON, CAR, BENCH = NAMES.index("person"), NAMES.index("car"), NAMES.index("bench")
W, H = 1000, 1000
FRAME_NS = 100_000_000  # 10 fps
LATER = 10**12  # a decision time after every capture in these tests


def detections(i: int, *objects: tuple, measured_by: NetworkPass | None = None, propagated: bool = False) -> Detections:
    """Objects as (class, score, box[, track id]); with a pass, a network frame of it (or a frame
    propagated from one)."""
    return Detections(
        frame_id=i, capture_ns=i * FRAME_NS, media_ns=i * FRAME_NS, image_width=W, image_height=H,
        exit_index=-1 if propagated or not measured_by else measured_by.exit_index, exit_count=2 if measured_by else 1,
        measured_by=measured_by,
        boxes=np.array([o[2] for o in objects], np.float32).reshape(-1, 4),
        scores=np.array([o[1] for o in objects], np.float32), class_ids=np.array([o[0] for o in objects], np.uint16),
        track_ids=np.array([o[3] if len(o) > 3 else k + 1 for k, o in enumerate(objects)], np.uint32),  # k-th object: track k+1
    )


def centred(height: float, bottom: float = 0.9, width: float = 0.1) -> tuple[float, float, float, float]:
    return (W * (0.5 - width / 2), H * (bottom - height), W * (0.5 + width / 2), H * bottom)


def maker(**rules) -> DecisionMaker:
    return DecisionMaker(DecisionRules(**rules), NAMES)


def test_point_in_polygon_fraction():
    square = np.array([(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)])
    assert fraction_in_polygon(0.3, 0.7, 0.5, square) == 1.0
    assert fraction_in_polygon(0.8, 0.9, 0.5, square) == 0.0
    assert 0.4 < fraction_in_polygon(0.0, 0.5, 0.5, square) < 0.6


def test_a_tall_person_in_the_path_means_brake_with_the_target_named():
    d = maker().decide(detections(1, (PERSON, 0.9, centred(0.4))), LATER)
    assert (d.action, d.reason) == (Action.BRAKE, Reason.OBJECT_IN_PATH)
    assert d.target.class_id == PERSON and d.target.box == pytest.approx(centred(0.4))
    assert "person in path" in d.detail and d.stamps[-1].stage == "decision"


def test_size_bands_slow_then_proceed():
    assert maker().decide(detections(1, (CAR, 0.9, centred(0.2))), LATER).action == Action.SLOW
    d = maker().decide(detections(1, (CAR, 0.9, centred(0.05))), LATER)
    assert (d.action, d.reason) == (Action.PROCEED, Reason.CLEAR) and d.target.class_id == CAR


def test_objects_outside_the_path_low_scores_and_irrelevant_classes_are_ignored():
    beside = (W * 0.02, H * 0.5, W * 0.15, H * 0.95)
    d = maker().decide(detections(1, (PERSON, 0.9, beside), (PERSON, 0.2, centred(0.5)), (BENCH, 0.9, centred(0.5))), LATER)
    assert (d.action, d.reason, d.target) == (Action.PROCEED, Reason.CLEAR, None)


def test_a_small_but_growing_object_is_closing_fast():
    m = maker()
    decisions = [m.decide(detections(i, (CAR, 0.9, centred(0.05 * 1.1 ** i))), LATER) for i in range(8)]
    assert decisions[0].action == Action.PROCEED  # one sample: no rate yet
    assert (decisions[-1].action, decisions[-1].reason) == (Action.BRAKE, Reason.CLOSING_FAST)
    # h grows 10% per 0.1 s: d ln h / dt = ln(1.1) / 0.1 s, so TTC = 1.05 s.
    assert decisions[-1].target.ttc_s == pytest.approx(0.1 / np.log(1.1), rel=0.01)


FULL, SHALLOW = NetworkPass(416, 416, 1), NetworkPass(416, 416, 0)
SHORTER = 0.82  # how much shorter the shallow pass draws a box in these tests (exit 0 on the bundled drives)


def test_a_still_car_is_not_closing_when_the_detector_changes_pass():
    """A detector under load changes input size or exit; the same car's box is then taller or
    shorter. Heights are compared within a pass, so the step is not taken for closing."""
    m = maker()
    for i in range(8):
        shallow = i < 4
        box = centred(0.05 * (SHORTER if shallow else 1.0))
        d = m.decide(detections(i, (CAR, 0.9, box), measured_by=SHALLOW if shallow else FULL), LATER)
        assert d.action == Action.PROCEED and d.target.ttc_s == math.inf, d.detail


def test_an_approaching_car_stays_closing_through_a_change_of_pass():
    """3% growth a frame (time to collision 3.4 s) measured at full depth, then by a pass that draws
    boxes shorter: the fit within each pass keeps the rate; across them the step would hide it."""
    m = maker()
    for i in range(8):
        shallow = i >= 4
        box = centred(0.05 * 1.03 ** i * (SHORTER if shallow else 1.0))
        d = m.decide(detections(i, (CAR, 0.9, box), measured_by=SHALLOW if shallow else FULL), LATER)
        if i >= 2:  # judged on this frame's fit, not held from an earlier one
            assert (d.action, d.reason) == (Action.SLOW, Reason.CLOSING_FAST) and "holding" not in d.detail, d.detail
            assert d.target.ttc_s == pytest.approx(0.1 / np.log(1.03), rel=0.01)


def test_a_pass_seen_once_adds_nothing_until_it_is_seen_again():
    m = maker()
    for i in range(3):
        d = m.decide(detections(i, (CAR, 0.9, centred(0.05 * 1.1 ** i)), measured_by=FULL if i % 2 else SHALLOW), LATER)
    assert d.target.ttc_s == pytest.approx(0.1 / np.log(1.1), rel=0.01)  # from frames 0 and 2 (one pass)
    m = maker()
    for i in range(2):
        d = m.decide(detections(i, (CAR, 0.9, centred(0.05 * 1.1 ** i)), measured_by=FULL if i % 2 else SHALLOW), LATER)
    assert d.target.ttc_s == math.inf  # one sample of each pass: no rate yet


def test_growth_under_min_growth_is_not_closing_however_the_passes_alternate():
    """4% over the window (the gate is 5%): each pass's own ends span most of the window, so their
    growths are scaled to it, not added up (which would double it and call the car closing)."""
    per_frame = 1.04 ** (1 / 7)
    for alternate in (False, True):
        m = maker()
        for i in range(8):
            shallow = alternate and i % 2
            box = centred(0.05 * per_frame ** i * (SHORTER if shallow else 1.0))
            d = m.decide(detections(i, (CAR, 0.9, box), measured_by=SHALLOW if shallow else FULL), LATER)
        assert d.target.ttc_s == math.inf, (alternate, d.detail)
    m = maker()  # the same at 7% over the window: closing, alternating or not
    for i in range(8):
        box = centred(0.05 * (1.07 ** (1 / 7)) ** i * (SHORTER if i % 2 else 1.0))
        d = m.decide(detections(i, (CAR, 0.9, box), measured_by=SHALLOW if i % 2 else FULL), LATER)
    assert d.target.ttc_s == pytest.approx(0.7 / math.log(1.07), rel=0.01)


def test_with_one_pass_the_fit_is_the_plain_least_squares_fit_exactly():
    """Recordings made before the pass was sent (all None) and a detector that never changes pass
    decide exactly as the fit over every sample did."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        heights = 0.05 * np.cumprod(rng.uniform(0.97, 1.12, 8))
        for measured_by in (None, FULL):
            m = maker(release_frames=0)  # every frame's own verdict, none held
            for i, h in enumerate(heights):
                d = m.decide(detections(i, (CAR, 0.9, centred(float(h))), measured_by=measured_by), LATER)
            boxes = np.array([centred(float(h)) for h in heights], np.float32)
            log_h = [math.log(float(b[3]) - float(b[1])) for b in boxes]
            t = [i * FRAME_NS / 1e9 for i in range(8)]
            mean_t, mean_y = math.fsum(t) / 8, math.fsum(log_h) / 8
            slope = (math.fsum((a - mean_t) * (b - mean_y) for a, b in zip(t, log_h))
                     / math.fsum((a - mean_t) ** 2 for a in t))
            grew = (boxes[-1, 3] - boxes[-1, 1]) >= (boxes[0, 3] - boxes[0, 1]) * 1.05
            expected = 1 / slope if grew and slope > 1e-6 else math.inf
            if abs(math.log((boxes[-1, 3] - boxes[-1, 1]) / (boxes[0, 3] - boxes[0, 1])) - math.log(1.05)) > 1e-9:
                assert d.target.ttc_s == expected  # bit for bit, off the gate's rounding boundary


def test_propagated_boxes_join_a_new_pass_only_once_two_network_frames_ran_it():
    """After a change of pass a propagated frame's box takes its size from the tracker's filter,
    which saw the step from the old pass's size as growth and carries it on: growth that is not
    motion. A still car, the network every other frame, shallow then full depth: the propagated box
    right after the change (8% taller) is left out of the fit until two network frames in a row
    have run full depth."""
    m = maker()
    scales = [SHORTER, SHORTER, SHORTER, SHORTER, 1.0, 1.08, 1.0, 1.0, 1.0, 1.0]  # network, propagated, ...
    for i, scale in enumerate(scales):
        d = m.decide(detections(i, (CAR, 0.9, centred(0.05 * scale)), measured_by=SHALLOW if i < 4 else FULL,
                                propagated=i % 2 == 1), LATER)
        assert d.target.ttc_s == math.inf, (i, d.detail)
    m = maker()  # once settled, propagated boxes count: a car growing 10% a frame closes on every one
    for i in range(8):
        d = m.decide(detections(i, (CAR, 0.9, centred(0.05 * 1.1 ** i)), measured_by=FULL, propagated=i % 2 == 1), LATER)
        if i >= 1:
            assert d.target.ttc_s == pytest.approx(0.1 / np.log(1.1), rel=0.01), (i, d.detail)


def test_a_box_whose_height_overflows_float32_is_decided_not_a_crash():
    """A hostile message's box spanning -3e38..3e38 is finite in float32, its height is not."""
    from perception.codec import decode, encode

    m = maker()
    for i, box in enumerate([(450, 300, 550, 400), (450, -3e38, 550, 3e38), (450, 200, 550, 400),
                             (450, -3e38, 550, 3e38), (450, 300, 550, 400)]):
        d = m.decide(decode(encode(detections(i, (CAR, 0.9, box, 7)))), LATER)
        assert d.action in (Action.PROCEED, Action.SLOW, Action.BRAKE)


def test_pixel_jitter_is_not_closing():
    m = maker()
    for i in range(12):
        d = m.decide(detections(i, (CAR, 0.9, centred(0.05 + (0.002 if i % 2 else 0)))), LATER)
        assert d.action == Action.PROCEED, d.detail


def test_escalation_is_immediate_and_release_waits_for_calm_frames():
    m = maker(release_frames=3)
    clear = detections(0)
    assert m.decide(clear, LATER).action == Action.PROCEED
    assert m.decide(detections(1, (PERSON, 0.9, centred(0.4))), LATER).action == Action.BRAKE
    held = [m.decide(detections(i), LATER) for i in range(2, 5)]
    assert [d.action for d in held] == [Action.BRAKE] * 3 and "holding BRAKE" in held[0].detail
    assert m.decide(detections(5), LATER).action == Action.PROCEED
    assert m.decide(detections(6, (PERSON, 0.9, centred(0.4))), LATER).action == Action.BRAKE


def test_unknown_class_names_and_bad_rules_are_rejected():
    with pytest.raises(ValueError, match=r"\['motorcycle'\] are not classes of the detector"):
        maker(classes=["person", "motorcycle"])
    with pytest.raises(ValueError, match="slow_height <= brake_height"):
        DecisionRules(slow_height=0.5, brake_height=0.2)
    with pytest.raises(ValueError, match="roi needs 3 to 64"):
        DecisionRules(roi=[(0, 0), (1, 1)])


def test_a_car_squarely_ahead_cut_off_by_the_bottom_edge_brakes():
    """Issue 16 item 1: the detector clips boxes to the frame, so the closest car ahead ends exactly on
    the bottom row, the ego path's own edge; a strict inside test found it outside and said PROCEED."""
    cut_off = (W * 0.4, H * 0.75, W * 0.6, H * 1.0)  # 0.25 tall: by its height alone only SLOW
    d = maker().decide(detections(1, (CAR, 0.9, cut_off)), LATER)
    assert (d.action, d.reason) == (Action.BRAKE, Reason.OBJECT_IN_PATH) and "bottom edge" in d.detail
    beside = (W * 0.0, H * 0.75, W * 0.12, H * 1.0)  # cut off too, but in the next lane
    assert maker().decide(detections(1, (CAR, 0.9, beside)), LATER).action == Action.PROCEED


def test_an_approaching_car_never_falls_back_from_brake_when_it_reaches_the_frame_edge():
    m = maker(release_frames=0)  # no hysteresis: each frame's own verdict
    actions = []
    for i in range(12):  # the box grows and slides down until the frame's edge cuts it
        bottom = min(0.80 + 0.025 * i, 1.0)
        height = 0.30 + 0.02 * i
        actions.append(m.decide(detections(i, (CAR, 0.9, centred(height, bottom=bottom, width=0.2), 3)), LATER).action)
    braking = actions.index(Action.BRAKE)
    assert actions[braking:] == [Action.BRAKE] * (len(actions) - braking), actions


def test_the_path_is_closed_a_segment_on_its_boundary_is_in_it():
    square = np.array([(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)])
    assert fraction_in_polygon(0.3, 0.7, 0.75, square) == 1.0  # on the bottom edge
    assert fraction_in_polygon(0.3, 0.7, 0.25, square) == 1.0  # on the top edge
    assert fraction_in_polygon(0.75, 0.9, 0.5, square) == pytest.approx(1 / 9)  # one sample on the right edge
    assert fraction_in_polygon(0.3, 0.7, 0.751, square) == 0.0
    roi = np.array(DecisionRules().roi)
    assert fraction_in_polygon(0.3, 0.7, 1.0, roi) == 1.0  # the default path's bottom row is the frame's


def test_a_box_reaching_below_a_shorter_path_is_judged_on_its_lowest_row():
    short_path = [(0.4, 0.5), (0.6, 0.5), (0.7, 0.8), (0.3, 0.8)]  # ends above the hood, at 80% of the height
    d = maker(roi=short_path).decide(detections(1, (CAR, 0.9, (W * 0.4, H * 0.7, W * 0.6, H * 0.9))), LATER)
    assert d.action != Action.PROCEED and d.target is not None


def test_real_dashcam_frame_cars_in_other_lanes_proceed_and_in_a_path_over_them_slow():
    manifest = load_manifest("yolox_nano.json")
    detector = StagedNetwork(manifest, create_engine(EngineConfig(threads=1)))
    frame = cv2.imread(str(Path(__file__).resolve().parents[1] / "data/udacity_test1.jpg"))
    outcome = detector.detect(frame)
    seen = Detections(frame_id=1, capture_ns=0, image_width=frame.shape[1], image_height=frame.shape[0], exit_index=0,
                      exit_count=1, boxes=outcome.boxes, scores=outcome.scores, class_ids=outcome.class_ids)
    assert DecisionMaker(DecisionRules(), manifest.class_names()).decide(seen, LATER).action == Action.PROCEED
    right_lane = DecisionRules(roi=[(0.6, 0.55), (1.0, 0.55), (1.0, 1.0), (0.6, 1.0)], slow_height=0.1)
    d = DecisionMaker(right_lane, manifest.class_names()).decide(seen, LATER)
    assert (d.action, manifest.class_names()[d.target.class_id]) == (Action.SLOW, "car")


def test_time_to_collision_follows_the_track_ids_the_detector_gives_not_box_overlap():
    m = maker()
    for i in range(8):  # two cars swap places every frame; only their track ids say which is which
        near, far = centred(0.05 * 1.1 ** i, bottom=0.95), centred(0.05, bottom=0.9)
        objects = [(CAR, 0.9, near, 7), (CAR, 0.9, far, 9)]
        d = m.decide(detections(i, *(objects if i % 2 else objects[::-1])), LATER)
    assert (d.action, d.reason) == (Action.BRAKE, Reason.CLOSING_FAST)
    assert d.target.ttc_s == pytest.approx(0.1 / np.log(1.1), rel=0.01)


def test_an_untracked_detection_has_no_time_to_collision():
    m = maker()
    for i in range(8):
        d = m.decide(detections(i, (CAR, 0.9, centred(0.05 * 1.1 ** i), 0)), LATER)
    assert d.action == Action.PROCEED and math.isinf(d.target.ttc_s)


def test_every_class_id_of_a_relevant_name_is_judged_and_unknown_ids_are_not():
    """A model may list a name twice (two datasets' cars); a car under either id in the path is a
    car. An id past the model's list (a hostile or mismatched message) is no class of the rules."""
    names = ["car", "sign", "car"]
    close = centred(0.5)
    assert DecisionMaker(DecisionRules(classes=["car"]), names).decide(detections(1, (2, 0.9, close)), LATER).action == Action.BRAKE
    assert DecisionMaker(DecisionRules(classes=["car"]), names).decide(detections(1, (1, 0.9, close)), LATER).action == Action.PROCEED
    assert DecisionMaker(DecisionRules(classes=["car"]), names).decide(detections(1, (3, 0.9, close)), LATER).action == Action.PROCEED


def test_the_growth_fit_is_exact_on_a_line_and_its_order_does_not_matter():
    from perception.decision import within_slope

    assert within_slope([[0.0, 0.1, 0.2, 0.3]], [[1.0, 1.25, 1.5, 1.75]]) == 2.5
    x, y = [0.0, 0.05, 0.1, 0.15, 0.2], [0.1, 0.13, 0.19, 0.2, 0.27]
    assert within_slope([x], [y]) == within_slope([x[::-1]], [y[::-1]])  # exactly rounded sums
    assert within_slope([[1.0, 1.0]], [[0.0, 5.0]]) == 0.0  # no spread in time: no growth rate
    # Two groups on parallel lines with different offsets: their shared slope, not the step between them.
    assert within_slope([[0.0, 0.1], [0.2, 0.3]], [[1.0, 1.25], [9.5, 9.75]]) == 2.5
