"""Change outside the tracks: what propagating the tracks cannot show."""

import cv2
import numpy as np

from perception.tracking.change import change_outside, tiny


def texture(width: int = 640, height: int = 360, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 255, (height // 8, width // 8), np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


def test_nothing_new_is_no_change_and_a_new_object_outside_the_tracks_is():
    frame = texture()
    assert change_outside(tiny(frame), tiny(frame), np.zeros((0, 4)), frame.shape) == 0.0
    appeared = frame.copy()
    appeared[100:200, 400:500] = 255  # a 100x100 object: 4% of the frame
    share = change_outside(tiny(frame), tiny(appeared), np.zeros((0, 4)), frame.shape)
    assert 0.02 < share < 0.06


def test_what_moves_inside_a_tracked_box_is_the_tracks_business():
    frame = texture()
    moved = frame.copy()
    moved[100:200, 400:500] = 255
    box = np.array([[400, 100, 500, 200]], np.float64)
    assert change_outside(tiny(frame), tiny(moved), box, frame.shape) == 0.0


def test_a_camera_that_pans_is_not_all_change():
    frame = texture(seed=3)
    panned = np.roll(frame, 16, axis=1)  # 16 px at full size, 4 px in the tiny image
    raw = float((cv2.absdiff(tiny(frame), tiny(panned)) > 25).mean())
    compensated = change_outside(tiny(frame), tiny(panned), np.zeros((0, 4)), frame.shape)
    assert raw > 0.2 and compensated < 0.02


def test_a_tracked_box_beyond_the_frame_masks_nothing_it_does_not_cover():
    """Flow carries boxes past the frame's edge; a negative slice end used to mask most of the frame."""
    frame = texture()
    appeared = frame.copy()
    appeared[100:200, 100:200] = 255
    left_of_frame = np.array([[-60, 80, -20, 220]], np.float64)
    assert change_outside(tiny(frame), tiny(appeared), left_of_frame, frame.shape) > 0.02
