"""YOLOX pre- and post-processing in numpy/OpenCV: letterbox, grid decode, class-wise NMS."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the network input: scaled, then padded right/bottom to the input size."""

    scale: float
    frame_width: int
    frame_height: int
    input_width: int
    input_height: int


def check_frame(frame: np.ndarray) -> None:
    """ValueError unless `frame` is what the detector takes: an HxWx3 uint8 BGR image, at least 2x2 (what
    optical flow needs: every policy takes the same frames)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 2:
        raise ValueError(f"expected an HxWx3 uint8 BGR frame of at least 2x2 pixels, got {frame.shape} {frame.dtype}")


def _scaled(frame_width: int, frame_height: int, width: int, height: int) -> tuple[float, int, int]:
    """(scale, scaled width, scaled height) of a frame fitted into width x height, aspect kept."""
    scale = min(width / frame_width, height / frame_height)
    return scale, max(1, int(frame_width * scale)), max(1, int(frame_height * scale))


@functools.lru_cache(maxsize=256)  # pure, and asked several times a frame for the same few sizes
def budget_input(frame_width: int, frame_height: int, pixels: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(fit box, input size) of a frame under a pixel budget: the box is the largest scale at which the
    frame fits an input whose sides are multiples of `multiple` and whose area is at most `pixels`;
    the input is that scaled frame padded only up to the next multiples. Cost grows with the input's
    pixels, padding included, so the budget fixes the cost and the rule spends it on resolution:
    173,056 pixels (416x416) give 512x288 for 16:9, 480x352 for 4:3 and 768x224 for 1242x375. A frame
    smaller than that is not upscaled."""
    best = (0.0, multiple, multiple)
    height = multiple
    while height * multiple <= pixels:
        width = pixels // height // multiple * multiple
        scale = min(width / frame_width, height / frame_height)
        if scale > best[0]:
            best = (scale, width, height)
        height += multiple
    scale, box_width, box_height = best
    if scale > 1.0:  # a budget is a ceiling: upscaling a small frame spends pixels and adds no detail
        box_width, box_height = frame_width, frame_height
    _, new_w, new_h = _scaled(frame_width, frame_height, box_width, box_height)
    return (box_width, box_height), (math.ceil(new_w / multiple) * multiple, math.ceil(new_h / multiple) * multiple)


def letterbox(frame: np.ndarray, width: int, height: int, pad_value: float = 114.0,
              out: np.ndarray | None = None, input_size: tuple[int, int] | None = None,
              rgb: bool = False, pixel_scale: float = 1.0) -> tuple[np.ndarray, Letterbox]:
    """BGR uint8 HxWx3 -> float32 [1,3,H,W], resized keeping aspect ratio to fit width x height, at the
    top-left corner, padded with pad_value, 0-255 without normalisation (YOLOX's own preprocessing;
    `rgb` and `pixel_scale` 1/255 give Ultralytics'). The input is width x height, or `input_size`
    (W, H) when given (see budget_input): the same scale, less padding."""
    check_frame(frame)
    frame_h, frame_w = frame.shape[:2]
    scale, new_w, new_h = _scaled(frame_w, frame_h, width, height)
    input_w, input_h = input_size or (width, height)
    if new_w > input_w or new_h > input_h:
        raise ValueError(f"a {frame_w}x{frame_h} frame scaled to {new_w}x{new_h} does not fit a {input_w}x{input_h} input")
    canvas = np.full((input_h, input_w, 3), pad_value, np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if out is None:
        out = np.empty((1, 3, input_h, input_w), np.float32)
    out[0] = (canvas[:, :, ::-1] if rgb else canvas).transpose(2, 0, 1)
    if pixel_scale != 1.0:
        out *= pixel_scale
    return out, Letterbox(scale, frame_w, frame_h, input_w, input_h)


_GRID_CACHE: dict[tuple[int, int, tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}


def grids(width: int, height: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point grid offsets [N,2] and their strides [N,1], in YOLOX's output order."""
    key = (width, height, tuple(strides))
    if key not in _GRID_CACHE:
        offsets, scales = [], []
        for stride in strides:
            h, w = height // stride, width // stride
            yv, xv = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            offsets.append(np.stack((xv, yv), 2).reshape(-1, 2))
            scales.append(np.full((h * w, 1), stride))
        _GRID_CACHE[key] = (np.concatenate(offsets).astype(np.float32), np.concatenate(scales).astype(np.float32))
    return _GRID_CACHE[key]


def decode(raw: np.ndarray, box: Letterbox, strides: tuple[int, ...], score_threshold: float = 0.3,
           nms_threshold: float = 0.45, max_detections: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw exit output [1,N,5+C] of the input `box` describes -> (boxes xyxy in frame pixels [K,4],
    scores [K], class ids [K]).

    Score = objectness x best class score. Only candidates above the threshold are decoded, which
    is where the time goes on a CPU. NMS is per class.
    """
    offsets, stride = grids(box.input_width, box.input_height, strides)
    predictions = raw[0]
    if len(predictions) != len(offsets):
        raise ValueError(f"{len(predictions)} anchor points for a {box.input_width}x{box.input_height} input "
                         f"with strides {tuple(strides)}, which has {len(offsets)}")
    objectness = predictions[:, 4]
    class_ids = predictions[:, 5:].argmax(1)
    scores = objectness * predictions[np.arange(len(predictions)), 5 + class_ids]
    keep = scores > score_threshold
    if not keep.any():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint16)
    p, offsets, stride = predictions[keep], offsets[keep], stride[keep]
    centers = (p[:, :2] + offsets) * stride
    sizes = np.exp(np.minimum(p[:, 2:4], 10.0)) * stride  # clamp: a corrupt logit must not overflow
    boxes = np.concatenate((centers - sizes / 2, centers + sizes / 2), 1) / box.scale
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, box.frame_width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, box.frame_height)
    scores, class_ids = scores[keep], class_ids[keep]
    chosen = nms_per_class(boxes, scores, class_ids, nms_threshold)[:max_detections]
    return boxes[chosen].astype(np.float32), scores[chosen].astype(np.float32), class_ids[chosen].astype(np.uint16)


def nms_per_class(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by non-maximum suppression within each class, best score first. A candidate with a
    non-finite coordinate or score (an engine's overflow, e.g. in fp16) is dropped: it has no place to
    suppress others from, and one NaN in the class shift below would make every IoU NaN and keep only
    the best box of the whole frame."""
    finite = np.flatnonzero(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))
    if len(finite) == 0:
        return np.zeros(0, np.int64)
    if len(finite) < len(boxes):
        return finite[nms_per_class(boxes[finite], scores[finite], class_ids[finite], iou_threshold)]
    # Shift each class into its own region of the plane so one NMS pass never mixes classes (by the
    # boxes' whole extent: unclipped boxes, as Ultralytics' are at NMS, may reach below 0). In float64 and
    # within +-1e6 px, so a broken engine's huge but finite box neither overflows the shift nor swamps the
    # other boxes' precision.
    bounded = np.clip(boxes.astype(np.float64), -1e6, 1e6)
    shifted = bounded + (class_ids.astype(np.float64) * (bounded.max() - bounded.min() + 1.0))[:, None]
    order = scores.argsort()[::-1]
    x1, y1, x2, y2 = shifted.T
    areas = (x2 - x1) * (y2 - y1)
    kept = []
    while order.size:
        i = order[0]
        kept.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        iou = w * h / (areas[i] + areas[rest] - w * h + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(kept, np.int64)
