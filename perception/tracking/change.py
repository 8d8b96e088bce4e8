"""How much of a frame changed outside the tracked boxes: something the tracks do not explain moved
or appeared, which propagating the tracks cannot show.

Frame differencing at a tiny resolution (`TINY_WIDTH` pixels wide, from the grey image flow already
prepared), after compensating a global shift between the two frames (phase correlation, so a
camera that pans or shakes is not all change), with every tracked box (grown by `BOX_MARGIN` of its
size, for what moved with it) masked out. A pixel changed when its grey value moved by more than
`threshold`. A camera that moves forward still changes everywhere (zoom is not a shift): such a
camera runs the network more often, never less.
"""

from __future__ import annotations

import cv2
import numpy as np

TINY_WIDTH = 160
BOX_MARGIN = 0.25


def tiny(gray: np.ndarray) -> np.ndarray:
    """The grey image at TINY_WIDTH wide (or as it is, if narrower), float32 for phase correlation."""
    height, width = gray.shape
    if width > TINY_WIDTH:
        gray = cv2.resize(gray, (TINY_WIDTH, max(2, round(height * TINY_WIDTH / width))), interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32)


def change_outside(previous: np.ndarray, current: np.ndarray, boxes: np.ndarray, frame_shape: tuple[int, int],
                   threshold: float = 25.0) -> float:
    """Share (0..1) of the tiny frame, outside `boxes` (N, 4 xyxy in full-resolution pixels of a frame of
    `frame_shape` (height, width)), whose grey value changed by more than `threshold` once the global
    shift from `previous` to `current` (both from tiny()) is taken out."""
    (dx, dy), _ = cv2.phaseCorrelate(previous, current)
    height, width = current.shape
    if abs(dx) >= 0.5 or abs(dy) >= 0.5:
        previous = cv2.warpAffine(previous, np.float32([[1, 0, dx], [0, 1, dy]]), (width, height),
                                  borderMode=cv2.BORDER_REPLICATE)
    changed = cv2.absdiff(previous, current) > threshold
    # What the shift brought into view is not known to have changed.
    margin_x, margin_y = int(np.ceil(abs(dx))), int(np.ceil(abs(dy)))
    valid = np.ones_like(changed)
    if margin_x:
        valid[:, :margin_x] = valid[:, width - margin_x:] = False
    if margin_y:
        valid[:margin_y, :] = valid[height - margin_y:, :] = False
    scale_x, scale_y = width / frame_shape[1], height / frame_shape[0]
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        grow_x, grow_y = (x2 - x1) * BOX_MARGIN, (y2 - y1) * BOX_MARGIN
        valid[max(0, int((y1 - grow_y) * scale_y)):int(np.ceil((y2 + grow_y) * scale_y)) + 1,
              max(0, int((x1 - grow_x) * scale_x)):int(np.ceil((x2 + grow_x) * scale_x)) + 1] = False
    counted = int(valid.sum())
    return float((changed & valid).sum()) / counted if counted else 0.0
