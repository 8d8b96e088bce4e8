"""How much of a frame changed outside the tracked boxes: something the tracks do not explain moved
or appeared, which propagating the tracks cannot show.

Frame differencing at a tiny resolution (`TINY_WIDTH` pixels wide, from the grey image flow already
prepared), with every tracked box (grown by `BOX_MARGIN` of its size, for what moved with it) masked
out. A pixel changed when its grey value moved by more than `threshold`, and only where a 3x3 patch
changed (a morphological opening): a new object changes an area, while edges shifted by parallax or
by a camera that moves leave thin lines (on the bundled dashcam drive the opening keeps a quarter of
the changed pixels, on a static view a tenth: docs/BENCHMARKS.md). When that finds enough
change, the camera may have moved: the previous frame is warped onto the current one by the
homography of a grid of background points followed by optical flow (RANSAC), and the change is
measured again; what the camera's own motion explains (a pan, shake, the ground plane of a camera
moving forward) is then not change, what moves against it (a new object, parallax of something
near) still is. Where no homography can be found, the change stands.
"""

from __future__ import annotations

import cv2
import numpy as np

TINY_WIDTH = 160
BOX_MARGIN = 0.25
GRID = 12  # background points for the camera's motion: 12 x 12, less those on tracks
MIN_POINTS = 12


def tiny(gray: np.ndarray) -> np.ndarray:
    """The grey image at TINY_WIDTH wide (or as it is, if narrower)."""
    height, width = gray.shape
    if width > TINY_WIDTH:
        gray = cv2.resize(gray, (TINY_WIDTH, max(2, round(height * TINY_WIDTH / width))), interpolation=cv2.INTER_AREA)
    return gray


def change_outside(previous: np.ndarray, current: np.ndarray, boxes: np.ndarray, frame_shape: tuple[int, int],
                   threshold: int = 25, enough: float = 0.0) -> float:
    """Share (0..1) of the tiny frame, outside `boxes` (N, 4 xyxy in full-resolution pixels of a frame of
    `frame_shape` (height, width)), whose grey value changed by more than `threshold` once the global
    shift from `previous` to `current` (both from tiny()) is taken out. The shift is looked for only
    when the share before it exceeds `enough` (a static camera's frames rarely need it)."""
    height, width = current.shape
    outside = np.ones((height, width), bool)
    scale_x, scale_y = width / frame_shape[1], height / frame_shape[0]
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        grow_x, grow_y = (x2 - x1) * BOX_MARGIN, (y2 - y1) * BOX_MARGIN
        rows = max(0, int((y1 - grow_y) * scale_y)), max(0, int(np.ceil((y2 + grow_y) * scale_y)) + 1)
        columns = max(0, int((x1 - grow_x) * scale_x)), max(0, int(np.ceil((x2 + grow_x) * scale_x)) + 1)
        outside[rows[0]:rows[1], columns[0]:columns[1]] = False  # never a negative end: numpy would count from the far side
    share = _changed_share(cv2.absdiff(previous, current) > threshold, outside)
    if share <= enough:
        return share
    camera = camera_motion(previous, current, outside)
    if camera is None:
        return share
    warped = cv2.warpPerspective(previous, camera, (width, height), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    seen = cv2.warpPerspective(np.full_like(previous, 255), camera, (width, height)) > 0  # what came into view is not known
    return _changed_share(cv2.absdiff(warped, current) > threshold, outside & seen)


def camera_motion(previous: np.ndarray, current: np.ndarray, background: np.ndarray) -> np.ndarray | None:
    """The homography taking `previous` onto `current` (3x3), from a GRID x GRID grid of points where
    `background` is true, moved by one Lucas-Kanade call and fitted with RANSAC; None when too few
    points move consistently."""
    height, width = previous.shape
    xs = (np.arange(GRID) + 0.5) * width / GRID
    ys = (np.arange(GRID) + 0.5) * height / GRID
    points = np.array([(x, y) for y in ys for x in xs if background[int(y), int(x)]], np.float32)
    if len(points) < MIN_POINTS:
        return None
    moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, points.reshape(-1, 1, 2), None, winSize=(9, 9),
                                                maxLevel=2)
    good = status.ravel() == 1
    if good.sum() < MIN_POINTS:
        return None
    homography, inliers = cv2.findHomography(points[good], moved.reshape(-1, 2)[good], cv2.RANSAC, 1.0)
    if homography is None or int(inliers.sum()) < MIN_POINTS:
        return None
    return homography


def _changed_share(changed: np.ndarray, counted: np.ndarray) -> float:
    total = int(counted.sum())
    if not total:
        return 0.0
    areas = cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_OPEN, _PATCH).astype(bool)
    return float((areas & counted).sum()) / total


_PATCH = np.ones((3, 3), np.uint8)
