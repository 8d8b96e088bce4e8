"""Make the frames of the synthetic approach drive (recordings/udacity_approach.mcap) from a real still.

    python recordings/make_approach.py FRAMES_DIR
    perception record recordings/udacity_approach.mcap --source FRAMES_DIR --jpeg-quality 50

The still is tests/data/udacity_test1.jpg (a real dashcam photo, MIT, see recordings/README.md).
Every frame is a crop of it, resized to 640x360: a digital zoom toward the black car ahead, so its
box grows as it would in an approach, and a pan that brings the car from the lane to the right into
the ego path (a cut-in). The zoom follows an approach at constant closing speed (the apparent size
of an object goes as 1/distance, so the time to collision the decision node estimates from box
growth is the real one of this schedule), holds while stopped behind the car, then zooms back out
as the car pulls away. It is synthetic motion: no parallax, the whole scene scales, and the deep
zoom (3.5x) is an upscale of a 366x206-pixel window. Same input, same frames: no randomness.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
STILL = REPO / "tests" / "data" / "udacity_test1.jpg"
OUTPUT_SIZE = (640, 360)
FPS = 10.0  # `perception record` plays an image folder at 10 frames per second
# The black car's bottom centre in the 1280x720 still (where its rear wheels meet the road).
CAR_ANCHOR = (879.0, 490.0)
HORIZON_V = 0.58  # normalised image row of the horizon: the top of the ego path in configs/decision.yaml

# Segments of (kind, frames). "approach": closing at constant speed, from a time to collision of
# APPROACH_TTC_S when it starts; "hold": stopped (the distance stays); "recede": the distance grows
# linearly back to that of the first frame.
APPROACH_TTC_S = 4.2
SCHEDULE = [("hold", 4), ("approach", 30), ("hold", 5), ("recede", 18), ("hold", 3)]


def zoom_schedule() -> list[float]:
    """Zoom factor per frame. The apparent size of an object goes as 1 / distance, so the zoom is
    z = d0 / d: an approach at constant speed v from distance d gives z(t) = z / (1 - t v / d), with
    d / v its time to collision."""
    zooms: list[float] = []
    z = 1.0
    for kind, frames in SCHEDULE:
        start = z
        for i in range(1, frames + 1):
            if kind == "approach":
                z = start / (1.0 - (i / FPS) / APPROACH_TTC_S)
            elif kind == "recede":
                z = 1.0 / (1.0 / start + (1.0 - 1.0 / start) * i / frames)
            zooms.append(z)
    return zooms


def crop_window(zoom: float, width: int, height: int) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) of the crop at this zoom. The car's bottom centre moves from where it is in the
    still towards the middle of the lane (x 0.5) and down from the horizon as 1/distance, as a
    point on the road ahead would; the window is kept inside the image."""
    ax, ay = CAR_ANCHOR
    w, h = width / zoom, height / zoom
    u0, v0 = ax / width, ay / height
    u = 0.5 + (u0 - 0.5) / zoom  # lateral offset shrinks as the car cuts in ahead
    v = HORIZON_V + (v0 - HORIZON_V) * zoom  # below the horizon by 1/distance
    x0 = float(np.clip(ax - u * w, 0, width - w))
    y0 = float(np.clip(ay - v * h, 0, height - h))
    return x0, y0, w, h


def render(still: np.ndarray, zoom: float) -> np.ndarray:
    x0, y0, w, h = crop_window(zoom, still.shape[1], still.shape[0])
    # A sub-pixel window (affine warp) keeps the zoom smooth from frame to frame; warped at the
    # still's own size, then shrunk by area averaging so the wide frames do not alias.
    sx, sy = still.shape[1] / w, still.shape[0] / h
    matrix = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], np.float64)
    window = cv2.warpAffine(still, matrix, (still.shape[1], still.shape[0]), flags=cv2.INTER_LINEAR)
    return cv2.resize(window, OUTPUT_SIZE, interpolation=cv2.INTER_AREA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the frames of the synthetic approach drive as PNGs")
    parser.add_argument("output", type=Path, help="a folder for the frames (created; must be empty)")
    args = parser.parse_args(argv)
    still = cv2.imread(str(STILL), cv2.IMREAD_COLOR)
    if still is None:
        print(f"make_approach: {STILL}: cannot read the still", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    if any(args.output.iterdir()):
        print(f"make_approach: {args.output}: not empty", file=sys.stderr)
        return 2
    zooms = zoom_schedule()
    for index, zoom in enumerate(zooms):
        # PNG: lossless here, the recorder does the one JPEG encoding.
        cv2.imwrite(str(args.output / f"frame_{index:03d}.png"), render(still, zoom))
    print(f"wrote {len(zooms)} frames to {args.output} (zoom {min(zooms):.2f}..{max(zooms):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
