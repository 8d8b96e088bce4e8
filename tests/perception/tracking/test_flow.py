"""Boxes moved by sparse optical flow: known shifts and zooms, bad input, the forward-backward check."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from perception.tracking.flow import BoxFlow, FlowConfig, FlowFrame, frame_change

HEIGHT, WIDTH = 240, 320


def texture(seed: int = 0, size: tuple[int, int] = (400, 500)) -> np.ndarray:
    """Smooth random texture: every patch has gradients in both directions (trackable)."""
    noise = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX)


def warp(base: np.ndarray, dx: float = 0.0, dy: float = 0.0, zoom: float = 1.0) -> np.ndarray:
    """A HEIGHT x WIDTH view of `base` shifted by (dx, dy) and zoomed about the view's centre."""
    # One warp from `base`, viewing it from (60, 60) on, so no black border enters the view (a border
    # is an edge of its own and pulls LK's coarse levels).
    cx, cy, margin = WIDTH / 2, HEIGHT / 2, 60
    matrix = np.float32([[zoom, 0, cx - zoom * (cx + margin) + dx], [0, zoom, cy - zoom * (cy + margin) + dy]])
    return cv2.warpAffine(base, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC)


BOXES = np.array([[40, 40, 120, 160], [180, 60, 260, 140], [100, 150, 220, 220]], np.float32)


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("shift", [(3.3, -2.6), (-7.5, 4.25), (0.0, 0.0)])
def test_known_shift_moves_boxes_by_it(scale: float, shift: tuple[float, float]) -> None:
    flow = BoxFlow(FlowConfig(scale=scale))
    base = texture()
    result = flow.propagate(flow.prepare(warp(base)), flow.prepare(warp(base, *shift)), BOXES)
    assert result.ok.all()
    expected = BOXES + np.float32([shift[0], shift[1], shift[0], shift[1]])
    np.testing.assert_allclose(result.boxes, expected, atol=0.5)
    assert (result.fb_error < 0.5).all() and (result.good_fraction == 1.0).all()


def test_color_and_single_channel_frames_agree() -> None:
    flow = BoxFlow()
    base = texture()
    grey_a, grey_b = warp(base), warp(base, 2.0, 1.0)
    bgr = flow.propagate(flow.prepare(cv2.cvtColor(grey_a, cv2.COLOR_GRAY2BGR)),
                         flow.prepare(cv2.cvtColor(grey_b, cv2.COLOR_GRAY2BGR)), BOXES)
    one = flow.propagate(flow.prepare(grey_a[:, :, None]), flow.prepare(grey_b), BOXES)
    np.testing.assert_allclose(bgr.boxes, one.boxes, atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        flow.prepare(grey_a.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        flow.prepare(np.zeros((HEIGHT, WIDTH, 4), np.uint8))


@pytest.mark.parametrize("zoom", [1.06, 0.94])
def test_zoom_scales_box_about_its_centre(zoom: float) -> None:
    flow = BoxFlow()
    base = texture()
    box = np.array([[110, 70, 210, 170]], np.float32)  # centred on the zoom centre (160, 120)
    result = flow.propagate(flow.prepare(warp(base)), flow.prepare(warp(base, zoom=zoom)), box)
    assert result.ok.all()
    assert result.scale[0] == pytest.approx(zoom, abs=0.01)
    width = result.boxes[0, 2] - result.boxes[0, 0]
    assert width == pytest.approx(100 * zoom, abs=1.5)
    centre = (result.boxes[0, :2] + result.boxes[0, 2:]) / 2
    np.testing.assert_allclose(centre, [160, 120], atol=1.0)
    fixed = BoxFlow(FlowConfig(estimate_scale=False)).propagate(
        flow.prepare(warp(base)), flow.prepare(warp(base, zoom=zoom)), box)
    assert fixed.boxes[0, 2] - fixed.boxes[0, 0] == pytest.approx(100, abs=1e-3)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_frame_rejects_every_point_and_moves_nothing(value: int) -> None:
    flow = BoxFlow()
    blank = flow.prepare(np.full((HEIGHT, WIDTH, 3), value, np.uint8))
    result = flow.propagate(blank, blank, BOXES)
    assert not result.ok.any()
    np.testing.assert_array_equal(result.boxes, BOXES)
    assert (result.good_fraction == 0).all()
    # Texture before, blank after (a lens cap, a dropped frame): still no invented motion.
    result = flow.propagate(flow.prepare(warp(texture())), blank, BOXES)
    assert not result.ok.any()
    np.testing.assert_array_equal(result.boxes, BOXES)


def test_sensor_noise_on_a_blank_wall_is_not_motion() -> None:
    # Fresh noise each frame (a dark or blank scene): points "track" noise that is not consistent
    # forward and backward, so no box claims a motion.
    flow = BoxFlow()
    rng = np.random.default_rng(3)
    noisy = [flow.prepare(np.clip(128 + rng.normal(0, 2, (HEIGHT, WIDTH)), 0, 255).astype(np.uint8)) for _ in range(2)]
    result = flow.propagate(noisy[0], noisy[1], BOXES)
    assert not result.ok.any()
    np.testing.assert_array_equal(result.boxes, BOXES)


def test_mismatched_frame_sizes_raise_naming_both() -> None:
    flow = BoxFlow()
    small = flow.prepare(np.zeros((HEIGHT, WIDTH), np.uint8))
    large = flow.prepare(np.zeros((HEIGHT * 2, WIDTH * 2), np.uint8))
    with pytest.raises(ValueError, match=r"\(240, 320\).*\(480, 640\)"):
        flow.propagate(small, large, BOXES)
    with pytest.raises(ValueError, match=r"\(480, 640\).*\(240, 320\)"):
        frame_change(large, small)


def test_bad_boxes_are_returned_unmoved_and_not_ok() -> None:
    flow = BoxFlow()
    base = texture()
    boxes = np.array([
        [40, 40, 120, 160],  # good
        [-200, -200, -100, -100],  # wholly outside
        [WIDTH + 5, 10, WIDTH + 50, 60],  # wholly outside, right
        [50, 50, 50, 90],  # zero width
        [np.nan, 10, 60, 60],  # NaN
        [10, 10, np.inf, 60],  # inf
        [90, 80, 30, 20],  # inverted
        [-40, 100, 60, 200],  # partly outside: tracked on its visible part
    ], np.float32)
    result = flow.propagate(flow.prepare(warp(base)), flow.prepare(warp(base, 2.0, 3.0)), boxes)
    np.testing.assert_array_equal(result.ok, [True, False, False, False, False, False, False, True])
    np.testing.assert_array_equal(result.boxes[1:7], boxes[1:7])  # NaN == NaN here
    np.testing.assert_allclose(result.boxes[7], boxes[7] + [2, 3, 2, 3], atol=0.5)
    assert np.isinf(result.fb_error[1:7]).all()


def test_empty_box_array_gives_empty_results() -> None:
    flow = BoxFlow()
    frame = flow.prepare(warp(texture()))
    for empty in (np.zeros((0, 4), np.float32), np.zeros(0), []):
        result = flow.propagate(frame, frame, empty)
        assert result.boxes.shape == (0, 4) and result.ok.shape == (0,) and result.fb_error.shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        flow.propagate(frame, frame, np.zeros((2, 3)))


def test_frame_change_is_zero_for_the_same_frame_and_large_for_a_cut() -> None:
    flow = BoxFlow()
    a = flow.prepare(warp(texture(0)))
    assert frame_change(a, a) == 0.0
    assert frame_change(a, flow.prepare(warp(texture(0), 0.5, 0.0))) < 10
    assert frame_change(a, flow.prepare(warp(texture(1)))) > 30
    assert frame_change(a, flow.prepare(np.zeros((HEIGHT, WIDTH), np.uint8))) > 80


def test_forward_backward_check_rejects_an_occluded_box() -> None:
    flow = BoxFlow()
    base, occluder = texture(0), texture(7)
    before, after = warp(base), warp(base, 2.0, 0.0)
    after[30:170, 30:130] = warp(occluder)[30:170, 30:130]  # something else now covers box 0
    result = flow.propagate(flow.prepare(before), flow.prepare(after), BOXES)
    assert not result.ok[0] and result.good_fraction[0] <= 0.25
    np.testing.assert_array_equal(result.boxes[0], BOXES[0])
    assert result.ok[1:].all()  # the unoccluded boxes still move
    np.testing.assert_allclose(result.boxes[1:, [0, 2]], BOXES[1:, [0, 2]] + 2.0, atol=0.5)


def test_fb_threshold_decides() -> None:
    # The same occluded pair with an absurdly loose threshold: points come back "ok" wherever LK
    # converged, which shows it is the forward-backward check that rejects them above.
    base, occluder = texture(0), texture(7)
    before, after = warp(base), warp(base, 2.0, 0.0)
    after[30:170, 30:130] = warp(occluder)[30:170, 30:130]
    strict, loose = BoxFlow(FlowConfig()), BoxFlow(FlowConfig(max_fb_error_px=1e6))
    a, b = strict.prepare(before), strict.prepare(after)
    assert loose.propagate(a, b, BOXES[:1]).good_fraction[0] > strict.propagate(a, b, BOXES[:1]).good_fraction[0]


@pytest.mark.parametrize("bad", [dict(scale=0.0), dict(grid=0), dict(window=8), dict(min_points=99),
                                 dict(max_fb_error_px=0.0), dict(min_box_scale=1.1), dict(inset=0.5)])
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        FlowConfig(**bad)


def test_flow_frame_keeps_full_resolution_shape() -> None:
    frame = BoxFlow(FlowConfig(scale=0.5)).prepare(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    assert isinstance(frame, FlowFrame) and frame.shape == (HEIGHT, WIDTH) and frame.gray.shape == (120, 160)


@pytest.mark.parametrize("size", [(720, 1280), (576, 768), (375, 1242), (376, 1242), (370, 1226), (1080, 1920),
                                  (1296, 2304), (1728, 3072)])  # factors 4, 2, 4 (none divide), 5, 6, 8
def test_a_colour_frame_is_prepared_as_its_grey_image_area_averaged(size: tuple[int, int]) -> None:
    # An even factor that divides both sides runs as halvings and a last step (cheaper): the result must
    # be the grey image area-averaged by the whole factor in one step, to within a grey level of rounding.
    height, width = size
    frame = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    prepared = BoxFlow().prepare(frame)
    factor = -(-width // FlowConfig().max_width)  # all at least twice max_width wide: scale 0.5 asks no more
    assert prepared.shape == size and prepared.gray.shape == (round(height / factor), round(width / factor))
    expected = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), prepared.gray.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(prepared.gray.astype(int) - expected).max() <= 1
