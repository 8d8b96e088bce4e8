"""The detector over a frame sequence: its policy's plans, the network at the planned size, flow
propagation, the tracker, resets."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from helpers import REPO
from perception.detection.builder import DetectorSettings, build_detector, build_network
from perception.detection.policies import PolicyConfig
from perception.detection.adaptive import AdaptiveConfig
from perception.engines import EngineConfig
from perception.detection.outputs import detections_message
from perception.latency import now_ns
from perception.messages import LEVEL_PROPAGATE, NetworkPass, Stamp

CAR = 2
FRAME_NS = 100_000_000  # 10 fps
SETTINGS = DetectorSettings(engine=EngineConfig(threads=1))


@pytest.fixture(scope="module")
def network():
    return build_network(SETTINGS, warm_up=())


@pytest.fixture(scope="module")
def street() -> np.ndarray:
    return cv2.imread(str(REPO / "tests/data/udacity_test1.jpg"))


def texture(width: int = 640, height: int = 360, seed: int = 0) -> np.ndarray:
    """Smooth random texture: optical flow has something to hold on to, the network finds nothing."""
    noise = np.random.default_rng(seed).integers(0, 255, (height // 8, width // 8, 3), np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def detector(network, kind: str = "adaptive", ego_path: bool = True, sizes=(1.0, 0.5), **adaptive):
    policy = PolicyConfig(kind=kind, sizes=list(sizes), adaptive=replace(AdaptiveConfig(), **adaptive))
    settings = replace(SETTINGS, policy=policy, risk=replace(SETTINGS.risk, ego_path=ego_path))
    return build_detector(settings, network=network)


def test_propagated_frames_move_the_boxes_with_the_image_and_keep_their_tracks(network, street):
    frames = detector(network, ego_path=False, entering_hits=0, max_change=1.0, max_gap_ms=150)
    first = frames.process(street, 0)
    assert first.level >= 0 and (first.output.class_ids == CAR).sum() >= 2
    assert first.measured_by == NetworkPass(*first.input_size, first.level)
    second = frames.process(np.roll(street, 6, axis=1), FRAME_NS)  # the camera pans 6 px right
    assert second.level == LEVEL_PROPAGATE and second.inference is None and second.flow_ns > 0
    assert second.measured_by == first.measured_by  # carried boxes: the pass that measured them
    tracked = first.output.track_ids > 0
    assert tracked.sum() >= 2 and np.array_equal(second.output.track_ids, first.output.track_ids)
    shift = second.output.boxes[tracked] - first.output.boxes[tracked]
    assert np.allclose(shift[:, [0, 2]], 6, atol=1.5) and np.allclose(shift[:, [1, 3]], 0, atol=1.5)
    third = frames.process(np.roll(street, 12, axis=1), 2 * FRAME_NS)  # 200 ms since the network: over max_gap_ms
    assert third.level >= 0 and third.why.startswith("time")


def test_a_motion_model_that_predicts_no_box_leaves_the_flows_box_not_an_inverted_one(network, street, monkeypatch):
    """A constant-velocity filter shrinking fast (noisy measurements of a far car) predicts a negative
    height a few frames on; the carried box was then inverted and its message refused (seen in an
    experiment that kept a track's growth rate across a change of network pass: the approach drive,
    `interval` 3, under the watchdog's ceiling; docs/BENCHMARKS.md)."""
    from perception.detection.outputs import detections_message

    frames = build_detector(replace(SETTINGS, policy=PolicyConfig(kind="interval", interval=3)), network=network)
    first = frames.process(street, 0)
    tracked = first.output.track_ids > 0
    assert tracked.sum() >= 2

    def inverted(t_ns):
        return {int(i): np.array([100, 100, 90, 80], np.float32) for i in first.output.track_ids if i > 0}

    monkeypatch.setattr(frames.tracker, "predict_boxes", inverted)
    second = frames.process(street, FRAME_NS)
    assert second.level == LEVEL_PROPAGATE
    boxes = second.output.boxes
    assert (boxes[:, 2:] >= boxes[:, :2]).all()
    np.testing.assert_allclose(boxes[tracked], first.output.boxes[tracked], atol=1.0)  # the flow's: the image stood still
    detections_message(second, frame_id=2, capture_ns=1, media_ns=FRAME_NS, image_width=street.shape[1],
                       image_height=street.shape[0], exit_count=frames.exit_count, stamps=(), received_ns=None, done_ns=2)


@pytest.mark.parametrize("fps, network_every", [(10, 2), (30, 5)])
def test_the_longest_gap_is_in_milliseconds_so_one_config_works_at_any_frame_rate(network, fps, network_every):
    frames = detector(network, ego_path=False, max_gap_ms=150, max_change=1.0)
    blank = np.full((360, 640, 3), 90, np.uint8)
    levels = [frames.process(blank, int(i * 1e9 / fps)).level for i in range(2 * network_every + 1)]
    assert [i for i, level in enumerate(levels) if level >= 0] == [0, network_every, 2 * network_every]


def test_a_network_frame_runs_at_the_smallest_size_that_keeps_the_tracks_tall_enough_and_scouts_at_full_size(network, street):
    frames = detector(network, ego_path=False, sizes=[1.0, 0.25], min_object_px=8, max_gap_ms=0, full_size_every_ms=250,
                      entering_hits=0, max_change=1.0)
    full, quarter = network.input_size(1280, 720)[1], network.input_size(1280, 720, network.pixels // 4)[1]
    outcomes = [frames.process(street, i * FRAME_NS) for i in range(6)]
    sizes = [outcome.input_size for outcome in outcomes]
    # Cars 40+ px tall are 8+ px at a quarter of the pixels; every 250 ms a frame at full size looks for more.
    assert sizes == [full, quarter, quarter, full, quarter, quarter], sizes
    # Each says which pass measured its boxes: the decision node fits a track's growth within one.
    assert [o.measured_by for o in outcomes] == [NetworkPass(*size, o.level) for size, o in zip(sizes, outcomes)]
    tiny_tracks = detector(network, ego_path=False, sizes=[1.0, 0.25], min_object_px=200, max_gap_ms=0,
                           entering_hits=0, max_change=1.0)
    assert {tiny_tracks.process(street, i * FRAME_NS).input_size for i in range(3)} == {full}


def test_change_outside_the_tracks_runs_the_network_at_full_size(network):
    frames = detector(network, ego_path=False, max_gap_ms=1000, max_change=0.01)
    frame = texture(seed=1)
    frames.process(frame, 0)
    assert frames.process(frame, FRAME_NS).level == LEVEL_PROPAGATE
    appeared = frame.copy()
    appeared[100:200, 400:500] = 255  # something new, where no track is
    outcome = frames.process(appeared, 2 * FRAME_NS)
    assert outcome.level >= 0 and outcome.why == "change" and outcome.input_size == network.input_size(640, 360)[1]


def test_a_new_frame_size_or_a_scene_cut_resets_the_tracks_and_is_counted(network, street):
    frames = detector(network, ego_path=False)
    frames.process(street, 0)
    assert frames.tracker.tracks
    cut = frames.process(texture(1280, 720), FRAME_NS)  # same size, another scene
    assert cut.level >= 0 and cut.why == "first frame" and frames.resets["scene cut"] == 1
    resized = frames.process(cv2.resize(street, (640, 360)), 2 * FRAME_NS)
    assert resized.level >= 0 and frames.resets["frame size"] == 1


def test_blank_frames_neither_crash_nor_invent_motion(network):
    frames = detector(network, ego_path=False, max_gap_ms=1000)
    blank = np.full((360, 640, 3), 90, np.uint8)
    outcomes = [frames.process(blank, i * FRAME_NS) for i in range(4)]
    assert [o.level for o in outcomes[1:]] == [LEVEL_PROPAGATE] * 3  # nothing to detect, nothing changes
    assert all(len(o.output.boxes) == 0 for o in outcomes)


def test_the_interval_policy_runs_the_network_every_n_frames(network):
    frames = build_detector(replace(SETTINGS, policy=PolicyConfig(kind="interval", interval=3)), network=network)
    levels = [frames.process(texture(), i * FRAME_NS).level for i in range(7)]
    assert [level >= 0 for level in levels] == [True, False, False, True, False, False, True]


def test_every_frame_policies_run_the_network_on_every_frame_compute_no_flow_and_still_track(network, street):
    frames = build_detector(replace(SETTINGS, policy=PolicyConfig(kind="fixed", exit=0)), network=network)
    outcomes = [frames.process(street, i * FRAME_NS) for i in range(3)]
    assert [o.level for o in outcomes] == [0, 0, 0] and all(o.flow_ns == 0 for o in outcomes)
    assert (outcomes[-1].output.track_ids > 0).sum() >= 2  # the same cars keep their ids
    assert set(outcomes[-1].output.track_ids[outcomes[-1].output.track_ids > 0]) <= set(outcomes[0].output.track_ids)


def test_a_timeline_that_goes_back_or_stands_still_cannot_keep_the_network_off(network):
    """A restarted capture plays its video from media time 0 again; a source without timestamps gives
    every frame the same one. Neither may stretch the time rule (found in review)."""
    frames = detector(network, ego_path=False, max_gap_ms=100, max_propagated=5, max_change=1.0)
    blank = np.full((360, 640, 3), 90, np.uint8)
    for i in range(3):
        frames.process(blank, 60 * 10**9 + i * FRAME_NS // 4)
    restarted = frames.process(blank, 0)
    assert restarted.level >= 0 and frames.resets["time backwards"] == 1
    still = [frames.process(blank, 0).level for _ in range(12)]
    assert [i for i, level in enumerate(still) if level >= 0] == [5, 11]  # 5 propagated, then the network


def test_the_policy_sees_the_tracks_the_tracker_holds_on_every_frame_and_none_after_a_reset(network, street):
    # The tracks are snapshotted once per network frame (only those change the tracker): a propagated
    # frame must still see exactly the tracker's, and a reset must not leave the old ones behind.
    frames = detector(network, ego_path=False, entering_hits=0, max_change=1.0, max_gap_ms=250)
    seen = []
    plan = frames.policy.plan

    def spy(context):
        live = [t for t in frames.tracker.tracks if t.frames_since_update == 0]
        seen.append(([(t.track_id, t.box.tolist()) for t in context.tracks], [(t.track_id, t.box.tolist()) for t in live]))
        return plan(context)

    frames.policy.plan = spy
    levels = [frames.process(np.roll(street, 3 * i, axis=1), i * FRAME_NS).level for i in range(4)]
    frames.reset("test")
    levels.append(frames.process(street, 4 * FRAME_NS).level)
    assert LEVEL_PROPAGATE in levels[:4] and levels[0] >= 0, levels
    assert seen[1][0] and all(context == live for context, live in seen), seen
    assert seen[4][0] == []  # after the reset: no track from before it


def sizes_of(network, frame_width: int, frame_height: int, budgets) -> set:
    return {network.input_size(frame_width, frame_height, budget)[1] for budget in budgets}


def test_the_cameras_frame_sizes_are_warmed_at_start_at_every_size_the_policy_may_run(street):
    settings = replace(SETTINGS, frame_sizes=[(1280, 720)], policy=PolicyConfig(kind="deadline", sizes=[1.0, 0.5]))
    fresh = build_network(settings, warm_up=())
    frames = build_detector(settings, network=fresh)
    wide = sizes_of(fresh, 1280, 720, frames.policy.budgets())
    assert len(wide) == 2 and wide <= fresh.warmed
    # Measured, so a deadline plans a 16:9 frame with its own costs, not only the square's.
    assert all(fresh.estimator.runs("stage0", size) >= 1 for size in wide)


def test_an_engine_whose_first_run_at_a_size_is_costly_warms_a_new_frame_sizes_inputs_one_a_frame(caplog):
    fresh = build_network(SETTINGS, warm_up=())
    frames = detector(fresh, kind="deadline")
    full, half = (fresh.input_size(640, 360, budget)[1] for budget in frames.policy.budgets())
    first = frames.process(texture(640, 360), 0)
    assert first.warm_ns == 0 and not {full, half} & fresh.warmed  # a CPU engine: a first run costs 1-2 ms more
    fresh.engine.compiles_per_input_size = True  # as PyTorch on CUDA (90-120 ms a first run on an H200)
    frames = detector(fresh, kind="deadline")
    first = frames.process(texture(640, 360), 0)
    # One size a frame (the node heartbeats between frames), the smallest first: a frame the warming
    # made late falls back to it under a deadline, and finds it warm.
    assert half in fresh.warmed and full not in fresh.warmed and first.warm_ns > 0
    assert "frame size 640x360 was not warmed up: its 2 input sizes" in caplog.text
    message = detections_message(first, frame_id=1, capture_ns=1, media_ns=0, image_width=640, image_height=360,
                                 exit_count=frames.exit_count, stamps=(Stamp("publish", 2),), received_ns=3, done_ns=now_ns())
    assert [stamp.stage for stamp in message.stamps[:4]] == ["publish", "det.recv", "det.warm", "det.preprocess"]
    assert message.stamps[2].t_ns == 3 + first.warm_ns  # the report's own stage, not the preprocessing's
    caplog.clear()
    second = frames.process(texture(640, 360, seed=1), FRAME_NS)
    assert full in fresh.warmed and second.warm_ns > 0
    assert frames.process(texture(640, 360, seed=2), 2 * FRAME_NS).warm_ns == 0
    assert "was not warmed up" not in caplog.text  # said once per frame size
    for width in (320, 352, 384, 416):  # a folder of mixed sizes: the first few are warmed, then no more
        frames.process(texture(width, 240), 3 * FRAME_NS)
    assert fresh.input_size(416, 240, max(frames.policy.budgets()))[1] not in fresh.warmed
    frames = detector(fresh, kind="deadline")
    frames.process(texture(640, 360), 0)  # warm already: no warning, and not counted against the 4 sizes
    assert "640x360 was not warmed up" not in caplog.text and not frames._cold
    with pytest.raises(ValueError, match="expected an HxWx3 uint8 BGR frame of at least 2x2 pixels, got \\(0, 640, 3\\)"):
        frames.process(np.zeros((0, 640, 3), np.uint8), 0)  # the network's own error, before any warming


@pytest.mark.parametrize("sizes", [[(0, 720)], [(1280, 99999)]])
def test_an_impossible_frame_size_is_a_config_error(sizes):
    with pytest.raises(ValueError, match=r"frame_sizes \[0\] \[[01]\] must be in \[2, 16384\]"):
        replace(SETTINGS, frame_sizes=sizes)


@pytest.mark.parametrize("kind", ["adaptive", "deadline"])
@pytest.mark.parametrize("shape", [(240, 320, 4), (240, 320), (1, 50, 3), (50, 1, 3)], ids=["BGRA", "grey", "1x50", "50x1"])
def test_every_policy_refuses_the_frames_the_network_does_not_take_with_its_error(network, kind, shape):
    # Once, under the adaptive policy, flow saw the frame first: another message ("(h, w), (h, w, 1) or
    # (h, w, 3)"), and a 1-pixel-high frame refused there ran at 32x32 under the deadline policy.
    frames = detector(network, kind=kind)
    with pytest.raises(ValueError, match=r"expected an HxWx3 uint8 BGR frame of at least 2x2 pixels"):
        frames.process(np.zeros(shape, np.uint8), 0)
    assert frames.process(texture(), 0).level >= 0  # and the detector goes on with the next frame
