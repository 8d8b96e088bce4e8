"""Boxes carried from one frame to the next by sparse optical flow: a "depth" of zero network layers.

Each box gets a grid of points inset from its edges (the edges of a person box are mostly
background, which does not move with the person). All boxes' points go through ONE pyramidal
Lucas-Kanade call forward and one backward (batched: per-call overhead dominates for a few dozen
points). A point is kept when both calls converged, its patch has texture (LK's minimum-eigenvalue
test) and it comes back to within `max_fb_error_px` of where it started (forward-backward check,
Kalal et al., "Forward-Backward Error", ICPR 2010). A box moves by the median displacement of its
kept points and, optionally, scales by the median ratio of their pairwise distances (median flow);
a box with fewer than `min_points` kept points is returned unmoved with ok=False.

Flow runs on a grey image downscaled by `scale`; boxes, shifts and errors are full-resolution
pixels. `prepare()` does the per-frame work once (grey, resize) and the result is reused as the
next frame's "previous". The LK pyramid is not kept with it: OpenCV's Python binding does not accept
buildOpticalFlowPyramid's output as calcOpticalFlowPyrLK's image (opencv/opencv#4777, still open;
checked on OpenCV 5.0.0: "Expected Ptr<cv::UMat> for argument 'prevImg'"), so LK builds both
pyramids in each call; perception/benchmarks/flow.py measures that share (what reuse would save).

`frame_change()` is a cheap global signal for a depth gate: the mean absolute difference of two
prepared greys (0..255). Measured with the defaults (scale 0.5) by `python -m perception.benchmarks.flow`:
PETS09 dev clip (static camera, 10 fps) p50 1.6, p99 3.0, max 4.5; Udacity dashcam (moving car,
25 fps, resized to 768x576) p50 9.8, p99 12.5, max 12.5; hard cuts between the two 49.9-55.0. A
threshold around 25 separates cuts from motion on both.

Defaults were tuned on PETS09 frames 0-399 only (the table is in perception/benchmarks/flow.py's
output): about 1.1 ms per frame for 10 boxes at 768x576 on the 2-core dev VM, and a mean IoU with
the ground truth of 0.88 / 0.83 / 0.81 / 0.78 one to four frames ahead (holding the boxes still:
0.75 / 0.58 / 0.44 / 0.34).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import cv2
import numpy as np

from perception.config import Range, check_ranges

__all__ = ["FlowConfig", "FlowFrame", "FlowResult", "BoxFlow", "frame_change", "to_gray"]


@dataclass(frozen=True)
class FlowConfig:
    """How boxes are moved by flow. Plain types, so it can be a YAML section."""

    scale: Annotated[float, Range(0.05, 1)] = 0.5  # flow runs on the grey image resized by this (speed); boxes stay in full-res pixels
    max_width: Annotated[int, Range(32, 16384)] = 384  # ... and at most this wide (by a whole factor: 1280 px -> 320)
    grid: Annotated[int, Range(1, 10)] = 3  # grid x grid points per box
    inset: Annotated[float, Range(0, 0.5, high_open=True)] = 0.2  # points span the box shrunk by this fraction of its width/height on each side
    window: Annotated[int, Range(3, 99)] = 9  # LK window side, pixels at the flow scale (odd); LK's cost grows with its area
    levels: Annotated[int, Range(0, 8)] = 3  # pyramid levels above the base image (LK maxLevel)
    max_iterations: Annotated[int, Range(1, 1000)] = 10  # LK iterations per level
    epsilon: Annotated[float, Range(0, 10, low_open=True)] = 0.03  # LK stops earlier once a step is below this (flow-scale px)
    min_eigen: Annotated[float, Range(0, 1)] = 1e-4  # LK's texture test, OpenCV's default (min eigenvalue / window area): uniform patches fail it
    max_fb_error_px: Annotated[float, Range(0, 1e9, low_open=True)] = 3.0  # forward-backward error (full-res px) above which a point is rejected
    min_points: Annotated[int, Range(1, 100)] = 3  # a box needs this many good points, else its flow failed (unmoved, ok=False)
    estimate_scale: bool = True  # also scale the box by the median ratio of its points' pairwise distances
    min_box_scale: Annotated[float, Range(0, 1, low_open=True)] = 0.8  # per-frame scale change is clamped to [min_box_scale, max_box_scale]
    max_box_scale: Annotated[float, Range(1, 100)] = 1.25
    scale_consistency: Annotated[float, Range(0, 100)] = 2.0  # scale is applied only where |log median ratio| >= this x the ratios' robust spread (0: always)
    scene_cut: Annotated[float, Range(0, 255)] = 40.0  # frame change (frame_change, 0..255) above which tracks reset
    min_box_px: Annotated[float, Range(0, 10_000, low_open=True)] = 2.0  # a box whose visible part is narrower or shorter than this (full-res px) is not tracked

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd, got {self.window}")
        if not self.min_points <= self.grid * self.grid:
            raise ValueError(f"min_points must be in 1..grid*grid ({self.grid * self.grid}), got {self.min_points}")


@dataclass
class FlowFrame:
    """A frame as flow needs it; made by BoxFlow.prepare() and reused as "previous" for the next frame."""

    gray: np.ndarray  # uint8 (h, w) grey at the flow scale
    shape: tuple[int, int]  # full-resolution (height, width)


@dataclass
class FlowResult:
    boxes: np.ndarray  # (N, 4) xyxy float32 full-res px: moved boxes (a failed box is returned unmoved)
    ok: np.ndarray  # (N,) bool: at least min_points good points
    fb_error: np.ndarray  # (N,) float32 median forward-backward error of the box's points, full-res px (inf if none)
    good_fraction: np.ndarray  # (N,) float32 fraction of the box's points that passed every check
    scale: np.ndarray  # (N,) float32 scale change applied (1 when not estimated or failed)

    @staticmethod
    def unmoved(boxes: np.ndarray) -> "FlowResult":
        n = len(boxes)
        return FlowResult(boxes=boxes.astype(np.float32, copy=True), ok=np.zeros(n, bool),
                          fb_error=np.full(n, np.inf, np.float32), good_fraction=np.zeros(n, np.float32),
                          scale=np.ones(n, np.float32))


def to_gray(frame: np.ndarray) -> np.ndarray:
    """uint8 grey from a 1-channel (h, w) / (h, w, 1) or 3-channel BGR uint8 image."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ValueError(f"frame must be a uint8 numpy array, got {getattr(frame, 'dtype', type(frame))}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        gray = frame
    elif frame.ndim == 3 and frame.shape[2] == 3:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    else:
        raise ValueError(f"frame must be (h, w), (h, w, 1) or (h, w, 3), got shape {frame.shape}")
    if gray.shape[0] < 2 or gray.shape[1] < 2:
        raise ValueError(f"frame too small: {frame.shape}")
    return gray


def frame_change(previous: FlowFrame, current: FlowFrame) -> float:
    """Mean absolute grey difference of two prepared frames, 0..255: a scene-cut / camera-shake signal."""
    _check_same_size(previous, current)
    return float(cv2.mean(cv2.absdiff(previous.gray, current.gray))[0])


def _check_same_size(previous: FlowFrame, current: FlowFrame) -> None:
    # Different sizes mean a different source (or a resized one): flow between them is meaningless,
    # and the caller must reset its tracks rather than get garbage.
    if previous.shape != current.shape or previous.gray.shape != current.gray.shape:
        raise ValueError(f"frame sizes differ: previous {previous.shape} (flow {previous.gray.shape}), "
                         f"current {current.shape} (flow {current.gray.shape})")


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise median of values[..., mask] for a (..., N, M) array and an (N, M) mask, NaN for rows with
    nothing kept: several quantities of the same points in one sort (a propagated frame's cost is
    mostly such small numpy calls)."""
    rows, columns = mask.shape
    if columns == 0:
        return np.full(values.shape[:-1], np.nan)
    ordered = np.sort(np.where(mask, values, np.inf), axis=-1)  # kept values first
    count = mask.sum(axis=1)
    lo, hi = np.maximum((count - 1) // 2, 0), np.maximum(count // 2, 0)
    index = np.arange(rows)
    with np.errstate(invalid="ignore"):
        median = 0.5 * (ordered[..., index, lo] + ordered[..., index, hi])
    median[..., count == 0] = np.nan
    return median


class BoxFlow:
    """Moves boxes from a previous frame to the current one by pyramidal Lucas-Kanade flow."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        self.config = config or FlowConfig()
        c = self.config
        self._win = (c.window, c.window)
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, c.max_iterations, c.epsilon)
        # The grid spans the inset box corner to corner; a single point sits at its centre.
        steps = np.linspace(0.0, 1.0, c.grid) if c.grid > 1 else np.array([0.5])
        gx, gy = np.meshgrid(steps, steps)
        self._unit = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (P, 2) positions in the inset box, 0..1
        self._pairs = np.triu_indices(len(self._unit), k=1)  # every pair of a box's points once, for its scale

    def prepare(self, frame_bgr: np.ndarray) -> FlowFrame:
        """Grey and downscaled: the per-frame work, done once per frame."""
        gray = to_gray(frame_bgr)
        height, width = gray.shape
        # By a whole factor, by area averaging, which does not alias fine texture into false motion.
        factor = math.ceil(1.0 / min(self.config.scale, self.config.max_width / width) - 1e-9)
        size = (max(2, round(width / factor)), max(2, round(height / factor)))
        small = gray
        # OpenCV's fast path averages 2x2 blocks: 1280x720's grey by 4 in one step took 0.33 ms, in two
        # halvings 0.04. Only where the factor divides both sides (then each step is exact and the result
        # the same within a grey level of rounding; a fractional last step would weigh pixels otherwise).
        exact = width % factor == 0 and height % factor == 0
        while exact and factor > 2 and factor % 2 == 0:
            small = cv2.resize(small, (small.shape[1] // 2, small.shape[0] // 2), interpolation=cv2.INTER_AREA)
            factor //= 2
        if factor > 1:
            small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
        return FlowFrame(gray=np.ascontiguousarray(small), shape=(height, width))

    def propagate(self, previous: FlowFrame, current: FlowFrame, boxes: np.ndarray) -> FlowResult:
        """Boxes of `previous` (N, 4 xyxy full-res px) moved to `current`."""
        _check_same_size(previous, current)
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            return FlowResult.unmoved(np.zeros((0, 4), np.float32))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) xyxy, got shape {boxes.shape}")
        result = FlowResult.unmoved(boxes)
        valid, clipped = self._trackable(boxes, current.shape)
        if not valid.any():
            return result
        sx = previous.gray.shape[1] / previous.shape[1]  # exact resize factors (sizes are rounded)
        sy = previous.gray.shape[0] / previous.shape[0]
        factor = np.array([sx, sy])
        start = self._points(clipped[valid])  # (M, P, 2) full-res continuous coordinates
        flow_points = (start * factor - 0.5).reshape(-1, 1, 2).astype(np.float32)  # pixel-centre coords at flow scale
        moved, fb, good = self._track(previous, current, flow_points)
        count = start.shape[0]
        end = ((moved.reshape(count, -1, 2) + 0.5) / factor)
        fb = fb.reshape(count, -1) / min(sx, sy)  # flow px -> full-res px (conservative for unequal axes)
        good = good.reshape(count, -1) & (fb <= self.config.max_fb_error_px)
        self._fill(result, np.flatnonzero(valid), boxes[valid], start, end, fb, good)
        return result

    def _trackable(self, boxes: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes whose visible part is big enough, and that visible part (points outside the image cannot be tracked)."""
        height, width = shape
        finite = np.isfinite(boxes).all(axis=1)
        safe = np.where(finite[:, None], boxes, 0.0)
        clipped = np.stack([np.clip(safe[:, 0], 0, width), np.clip(safe[:, 1], 0, height),
                            np.clip(safe[:, 2], 0, width), np.clip(safe[:, 3], 0, height)], axis=1)
        size_ok = ((clipped[:, 2] - clipped[:, 0]) >= self.config.min_box_px) & \
                  ((clipped[:, 3] - clipped[:, 1]) >= self.config.min_box_px)
        return finite & size_ok, clipped

    def _points(self, boxes: np.ndarray) -> np.ndarray:
        """(M, P, 2) grid points inside each box, inset from its edges."""
        inset = self.config.inset
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        x0 = boxes[:, 0] + inset * w
        y0 = boxes[:, 1] + inset * h
        span = np.stack([w * (1 - 2 * inset), h * (1 - 2 * inset)], axis=1)  # (M, 2)
        return np.stack([x0, y0], axis=1)[:, None, :] + self._unit[None, :, :] * span[:, None, :]

    def _track(self, previous: FlowFrame, current: FlowFrame,
               points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One LK call forward and one backward for all points: (moved, fb error in flow px, converged)."""
        prev_img, curr_img = previous.gray, current.gray
        lk = dict(winSize=self._win, maxLevel=self.config.levels, criteria=self._criteria,
                  minEigThreshold=self.config.min_eigen)
        forward, status_f, _ = cv2.calcOpticalFlowPyrLK(prev_img, curr_img, points, None, **lk)
        # Backward from where the forward call ended; without an initial guess LK starts each point at
        # its own position, so agreement is not built in.
        backward, status_b, _ = cv2.calcOpticalFlowPyrLK(curr_img, prev_img, forward, None, **lk)
        fb = np.linalg.norm((backward - points).reshape(-1, 2), axis=1)
        converged = (status_f.ravel() == 1) & (status_b.ravel() == 1) & np.isfinite(fb)
        fb = np.where(converged, fb, np.inf)
        return forward.reshape(-1, 2), fb, converged

    def _fill(self, result: FlowResult, index: np.ndarray, boxes: np.ndarray, start: np.ndarray,
              end: np.ndarray, fb: np.ndarray, good: np.ndarray) -> None:
        """Median shift (and scale) of each box's good points, written into `result` at `index`."""
        count = good.sum(axis=1)
        ok = count >= self.config.min_points
        finite_fb = np.isfinite(fb)
        median_fb = _masked_median(np.where(finite_fb, fb, 0.0), finite_fb)
        result.fb_error[index] = np.where(np.isnan(median_fb), np.inf, median_fb)
        result.good_fraction[index] = count / good.shape[1]
        if not ok.any():
            return
        shift = end - start
        # The shift, and the good points' centre to scale about, in one sort.
        dx, dy, cx, cy = _masked_median(np.stack((shift[:, :, 0], shift[:, :, 1], start[:, :, 0], start[:, :, 1])), good)
        scale = self._scale(start, end, good) if self.config.estimate_scale else np.ones(len(boxes))
        moved = boxes.copy()
        moved[:, [0, 2]] = (boxes[:, [0, 2]] - cx[:, None]) * scale[:, None] + cx[:, None] + dx[:, None]
        moved[:, [1, 3]] = (boxes[:, [1, 3]] - cy[:, None]) * scale[:, None] + cy[:, None] + dy[:, None]
        rows = index[ok]
        result.boxes[rows] = moved[ok].astype(np.float32)
        result.ok[rows] = True
        result.scale[rows] = scale[ok].astype(np.float32)

    def _scale(self, start: np.ndarray, end: np.ndarray, good: np.ndarray) -> np.ndarray:
        """Median ratio of pairwise point distances after/before, clamped; 1 where too few pairs."""
        first, second = self._pairs
        d0 = np.linalg.norm(start[:, first] - start[:, second], axis=2)  # (M, pairs)
        d1 = np.linalg.norm(end[:, first] - end[:, second], axis=2)
        # Pairs closer than 2 px give ratios dominated by sub-pixel noise.
        pairs = good[:, first] & good[:, second] & (d0 >= 2.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.log(np.where(pairs, d1 / d0, 1.0))
        log_scale = _masked_median(log_ratio, pairs)
        # A rigid object that zooms gives the same ratio for every pair; a walking person (limbs) or
        # noise gives ratios scattered around 1. On PETS09 pedestrians the raw estimate had 5% noise
        # per frame against a true change of 0.5%, so a scale is only applied when it stands out of
        # its own pairs' spread (1.4826 x median absolute deviation = robust standard deviation).
        spread = 1.4826 * _masked_median(np.abs(log_ratio - log_scale[:, None]), pairs)
        consistent = np.abs(log_scale) >= self.config.scale_consistency * spread
        scale = np.where(np.isfinite(log_scale) & consistent, np.exp(log_scale), 1.0)
        return np.clip(scale, self.config.min_box_scale, self.config.max_box_scale)
