"""The temporal detector: gate, network, tracker and optical flow over a frame sequence."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from helpers import REPO
from perception.detection.adaptive import AdaptiveDetector
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.detection.policy import PolicyConfig
from perception.detection.temporal import GateConfig, TemporalConfig, TemporalDetector, max_pairwise_iou
from perception.engines import EngineConfig, create_engine
from perception.messages import LEVEL_PROPAGATE

CAR = 2
FRAME_NS = 100_000_000
ADAPTIVE = PolicyConfig(kind="adaptive")


@pytest.fixture(scope="module")
def detector() -> AdaptiveDetector:
    return AdaptiveDetector(load_manifest(WEIGHTS_DIR / "yolox_nano_exits.json"), create_engine(EngineConfig(threads=1)))


@pytest.fixture(scope="module")
def street() -> np.ndarray:
    return cv2.imread(str(REPO / "tests/data/udacity_test1.jpg"))


def texture(width: int = 640, height: int = 360, seed: int = 0) -> np.ndarray:
    """Smooth random texture: optical flow has something to hold on to, the network finds nothing."""
    noise = np.random.default_rng(seed).integers(0, 255, (height // 8, width // 8, 3), np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def gate(**changes) -> TemporalConfig:
    return TemporalConfig(gate=replace(GateConfig(), **changes))


def test_a_track_entering_the_ego_path_makes_the_next_frame_run_at_full_depth(detector):
    """Risk first: a car beside the path moving into it forces the network, deepest exit, on the
    next frame; the same car moving away from the path lets the frame be propagated."""
    frame = texture()
    easy = dict(max_propagated=10, young_frames=0, entering_frames=0)  # no other reason to run the network
    for direction, risky in ((+1, False), (-1, True)):
        temporal = TemporalDetector(detector, ADAPTIVE, gate(**easy))
        temporal.process(frame, 0)  # first frame: the network runs (and finds nothing on texture)
        for step in range(1, 5):  # a car beside the path (x > 470 px here), 10 px/frame away from (+1) or into (-1) it
            x = 520 + direction * 10 * step
            box = np.array([[x, 280, x + 60, 320]], np.float32)  # short of slow_height: far away
            temporal.tracker.update(box, np.array([0.9], np.float32), np.array([CAR], np.uint16), step * FRAME_NS, (640, 360))
        assert [t.confirmed for t in temporal.tracker.tracks] == [True]
        outcome = temporal.process(frame, 5 * FRAME_NS)
        if risky:
            assert outcome.level == detector.exit_count - 1 and outcome.why.startswith("risk:"), outcome.why
            assert "entering path" in outcome.why
        else:
            assert outcome.level == LEVEL_PROPAGATE, outcome.why


def test_propagated_frames_move_the_boxes_with_the_image_and_keep_their_tracks(detector, street):
    temporal = TemporalDetector(detector, ADAPTIVE, gate(max_propagated=1, young_frames=0, entering_frames=0, risk=False))
    first = temporal.process(street, 0)
    assert first.level >= 0 and (first.output.class_ids == CAR).sum() >= 2
    shifted = np.roll(street, 6, axis=1)  # the camera pans: everything moves 6 px right
    second = temporal.process(shifted, FRAME_NS)
    assert second.level == LEVEL_PROPAGATE and second.inference is None
    tracked = first.output.track_ids > 0
    assert tracked.sum() >= 2 and np.array_equal(second.output.track_ids, first.output.track_ids)
    shift = second.output.boxes[tracked] - first.output.boxes[tracked]
    assert np.allclose(shift[:, [0, 2]], 6, atol=1.5) and np.allclose(shift[:, [1, 3]], 0, atol=1.5)
    third = temporal.process(np.roll(street, 12, axis=1), 2 * FRAME_NS)
    assert third.level >= 0 and third.why.startswith("cap")  # at most one frame in a row without the network
    assert temporal.levels[LEVEL_PROPAGATE] == 1


def test_a_new_frame_size_or_a_scene_cut_resets_the_tracks_and_is_counted(detector, street):
    temporal = TemporalDetector(detector, ADAPTIVE, gate(risk=False))
    temporal.process(street, 0)
    assert temporal.tracker.tracks
    cut = temporal.process(texture(1280, 720), FRAME_NS)  # same size, another scene
    assert cut.level >= 0 and cut.why.startswith("scene cut") and temporal.resets["scene cut"] == 1
    resized = temporal.process(cv2.resize(street, (640, 360)), 2 * FRAME_NS)
    assert resized.level >= 0 and resized.why == "new frame size" and temporal.resets["frame size"] == 1


def test_blank_frames_neither_crash_nor_invent_motion(detector):
    temporal = TemporalDetector(detector, ADAPTIVE, gate(max_propagated=10, risk=False))
    blank = np.full((360, 640, 3), 90, np.uint8)
    outcomes = [temporal.process(blank, i * FRAME_NS) for i in range(4)]
    assert [o.level for o in outcomes[1:]] == [LEVEL_PROPAGATE] * 3  # nothing to detect, nothing changes
    assert all(len(o.output.boxes) == 0 for o in outcomes)


def test_keyframe_interval_mode_runs_the_network_every_n_frames(detector):
    temporal = TemporalDetector(detector, ADAPTIVE, gate(mode="interval", interval=3, risk=False))
    frame = texture()
    levels = [temporal.process(frame, i * FRAME_NS).level for i in range(7)]
    network = [level >= 0 for level in levels]
    assert network == [True, False, False, True, False, False, True]


def test_other_policies_run_the_network_on_every_frame_and_still_track(detector, street):
    temporal = TemporalDetector(detector, PolicyConfig(kind="fixed", exit=0), TemporalConfig())
    outcomes = [temporal.process(street, i * FRAME_NS) for i in range(3)]
    assert [o.level for o in outcomes] == [0, 0, 0] and all(o.flow_ns == 0 for o in outcomes)
    assert (outcomes[-1].output.track_ids > 0).sum() >= 2  # the same cars keep their ids
    assert set(outcomes[-1].output.track_ids[outcomes[-1].output.track_ids > 0]) <= set(outcomes[0].output.track_ids)


def test_max_pairwise_iou():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110]], np.float32)
    assert max_pairwise_iou(boxes) == pytest.approx(50 / 150)
    assert max_pairwise_iou(boxes[:1]) == 0.0
