from pathlib import Path

import cv2
import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from perception.detection.network import StagedNetwork
from perception.detection.manifest import load_manifest
from perception.detection.yolox import Letterbox, budget_input, decode, grids, letterbox, nms_per_class
from perception.engines import EngineConfig, create_engine

DATA = Path(__file__).resolve().parents[2] / "data"


def test_letterbox_keeps_aspect_ratio_top_left_with_yolox_padding():
    frame = np.full((720, 1280, 3), 200, np.uint8)
    tensor, box = letterbox(frame, 416, 416)
    assert tensor.shape == (1, 3, 416, 416) and tensor.dtype == np.float32
    assert box == Letterbox(scale=416 / 1280, frame_width=1280, frame_height=720, input_width=416, input_height=416)
    assert (tensor[0, :, :234, :] == 200).all() and (tensor[0, :, 234:, :] == 114).all()


@pytest.mark.parametrize("frame, box, size", [
    ((1280, 720), (576, 288), (512, 288)),  # 16:9: scale 0.4, the most the budget allows
    ((1242, 375), (768, 224), (768, 224)),  # a wide camera: 0.6 (416x128 when fitted into 416x416)
    ((768, 576), (480, 352), (480, 352)),
    ((416, 416), (416, 416), (416, 416)),
    ((720, 1280), (320, 512), (288, 512)),
    ((320, 240), (320, 240), (320, 256)),  # smaller than the budget: not upscaled, padded to 32
])
def test_the_pixel_budget_buys_the_largest_scale_the_frames_aspect_allows(frame, box, size):
    assert budget_input(*frame, 416 * 416, 32) == (box, size)


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 8192), height=st.integers(1, 8192), pixels=st.integers(32 * 32, 2048 * 2048))
def test_a_budgeted_input_holds_the_scaled_frame_in_multiples_of_32_within_the_budget(width, height, pixels):
    (box_w, box_h), (in_w, in_h) = budget_input(width, height, pixels, 32)
    assert in_w % 32 == 0 and in_h % 32 == 0 and in_w <= max(box_w, 32) + 31 and in_h <= max(box_h, 32) + 31
    scale = min(box_w / width, box_h / height)
    assert scale <= 1.0 + 1e-9 and int(width * scale) <= in_w and int(height * scale) <= in_h
    assert in_w * in_h <= pixels or scale == 1.0 or min(in_w, in_h) == 32  # one row of 32 is the least there is


def test_a_fitted_input_keeps_the_scale_and_drops_only_padding():
    frame = np.full((720, 1280, 3), 200, np.uint8)
    square, square_box = letterbox(frame, 416, 416)
    fitted, box = letterbox(frame, 416, 416, input_size=(416, 256))
    assert fitted.shape == (1, 3, 256, 416) and box.scale == square_box.scale
    assert (box.input_width, box.input_height) == (416, 256)
    np.testing.assert_array_equal(fitted[0], square[0, :, :256, :])
    with pytest.raises(ValueError, match="a 1280x720 frame scaled to 416x234 does not fit a 416x224 input"):
        letterbox(frame, 416, 416, input_size=(416, 224))


@pytest.mark.parametrize("frame", [np.zeros((10, 10), np.uint8), np.zeros((0, 10, 3), np.uint8),
                                   np.zeros((10, 10, 3), np.float32), np.zeros(10, np.uint8)])
def test_letterbox_rejects_wrong_frames(frame):
    with pytest.raises(ValueError, match="expected an HxWx3 uint8 BGR frame"):
        letterbox(frame, 416, 416)


def test_grid_order_is_stride_then_row_major():
    offsets, strides = grids(416, 416, (8, 16, 32))
    assert len(offsets) == 3549
    assert offsets[1].tolist() == [1, 0] and offsets[52].tolist() == [0, 1]
    assert strides[2704 - 1, 0] == 8 and strides[2704, 0] == 16 and strides[-1, 0] == 32


def test_decode_places_a_box_in_frame_pixels():
    raw = np.zeros((1, 3549, 85), np.float32)
    anchor = 52 * 10 + 20  # stride 8, cell (x=20, y=10)
    raw[0, anchor, :4] = [0.5, 0.5, np.log(4), np.log(2)]  # centre (164, 84), size 32 x 16 in input pixels
    raw[0, anchor, 4] = 0.9
    raw[0, anchor, 5 + 2] = 0.8
    boxes, scores, classes = decode(raw, Letterbox(0.5, 832, 832, 416, 416), (8, 16, 32))
    assert classes.tolist() == [2] and scores[0] == pytest.approx(0.72)
    np.testing.assert_allclose(boxes[0], [(164 - 16) * 2, (84 - 8) * 2, (164 + 16) * 2, (84 + 8) * 2])


def test_decode_follows_the_grid_of_a_fitted_input():
    raw = np.zeros((1, 52 * 32 + 26 * 16 + 13 * 8, 85), np.float32)  # a 416x256 input
    anchor = 52 * 10 + 20  # stride 8, cell (x=20, y=10): rows are 52 wide whatever the height
    raw[0, anchor, 4:6] = [0.9, 0.9]
    boxes, _, _ = decode(raw, Letterbox(0.5, 832, 512, 416, 256), (8, 16, 32))
    np.testing.assert_allclose(boxes[0], [(160 - 4) * 2, (80 - 4) * 2, (160 + 4) * 2, (80 + 4) * 2])  # 8 x 8 at (160, 80)
    with pytest.raises(ValueError, match="2184 anchor points for a 416x416 input with strides \\(8, 16, 32\\), which has 3549"):
        decode(raw, Letterbox(0.5, 832, 832, 416, 416), (8, 16, 32))


def test_nms_suppresses_within_a_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float32)
    kept = nms_per_class(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5)
    assert sorted(kept.tolist()) == [0, 2]


def test_a_candidate_with_a_nan_coordinate_is_dropped_and_suppresses_nothing():
    # An engine's overflow (fp16) may give one candidate a NaN: the frame's other objects, of every
    # class, must still come out (a NaN once made every IoU NaN and kept the best box alone).
    boxes = np.array([[0, 0, 10, 10], [100, 100, 150, 200], [300, 300, 350, 400], [np.nan, 5, 20, 20],
                      [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, np.nan], np.float32)
    assert sorted(nms_per_class(boxes, scores, np.array([0, 0, 2, 5, 0]), 0.45).tolist()) == [0, 1, 2]
    # A huge but finite box (an fp16 engine's 60000, a corrupt 1e38) neither overflows the class shift nor
    # swamps the other boxes' precision: each class keeps its own.
    for huge in (6e4, 1e38):
        boxes = np.array([[0, 0, 10, 10], [-huge, -huge, huge, huge], [100, 100, 150, 200], [0, 0, 10, 10]], np.float32)
        kept = nms_per_class(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32), np.array([0, 1, 0, 5]), 0.45)
        assert sorted(kept.tolist()) == [0, 1, 2, 3], huge
    raw = np.zeros((1, 52 * 32 + 26 * 16 + 13 * 8, 85), np.float32)  # a 416x256 input, through decode
    raw[0, [52 * 10 + 20, 52 * 20 + 40], 4:6] = 0.9  # two persons far apart
    raw[0, 52 * 5 + 5, 4] = 0.5
    raw[0, 52 * 5 + 5, [0, 10]] = [np.nan, 0.9]  # a weaker candidate of another class, x NaN
    boxes, _, class_ids = decode(raw, Letterbox(0.5, 832, 512, 416, 256), (8, 16, 32))
    assert len(boxes) == 2 and class_ids.tolist() == [0, 0] and np.isfinite(boxes).all()


def test_pretrained_model_finds_the_two_cars_in_a_real_dashcam_frame():
    manifest = load_manifest("yolox_nano.json")
    detector = StagedNetwork(manifest, create_engine(EngineConfig()))
    frame = cv2.imread(str(DATA / "udacity_test1.jpg"))
    outcome = detector.detect(frame)
    names = manifest.class_names()
    found = sorted(zip(outcome.boxes[:, 0].tolist(), [names[c] for c in outcome.class_ids], outcome.scores.tolist()))
    assert [name for _, name, _ in found] == ["car", "car"]
    assert all(score > 0.7 for _, _, score in found)
    # The white car near the right edge and the black car left of it (ground truth by eye).
    np.testing.assert_allclose(outcome.boxes[np.argsort(outcome.boxes[:, 0])], [[812, 408, 942, 493], [1050, 404, 1274, 508]], atol=12)
