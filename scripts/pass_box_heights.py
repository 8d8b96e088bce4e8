"""How tall each network pass draws the same objects, against full depth at the full pixel budget.

Usage: python scripts/pass_box_heights.py DRIVE.mcap [DRIVE.mcap ...]
Every frame is detected at full depth and full size, then by each other pass (half the pixels at
full depth; each earlier exit at full size); boxes are matched by IoU > 0.5 (full-depth score > 0.3)
and the ratio of their heights printed: median, p10 and p90, overall and by full-depth height. The
decision node fits a track's growth within one pass because these ratios are not 1.
"""
import sys
from pathlib import Path

import numpy as np

from perception.detection.builder import DetectorSettings, build_network
from perception.recording_reader import RecordingReader
from perception.tracking.association import iou_matrix


def main() -> None:
    network = build_network(DetectorSettings(), warm_up=())
    full = network.pixels
    passes = [(f"half the pixel budget ({full // 2} pixels), full depth", -1, full // 2)]
    passes += [(f"exit {k} at full size", k, full) for k in range(network.exit_count - 1)]
    frames = [pixels for drive in sys.argv[1:] for _, pixels in RecordingReader(Path(drive)).frames()]
    reference = [network.detect(pixels, -1, full) for pixels in frames]
    for name, exit_index, pixels_budget in passes:
        ratios = []
        for pixels, ref in zip(frames, reference):
            other = network.detect(pixels, exit_index, pixels_budget)
            if not len(ref.boxes) or not len(other.boxes):
                continue
            overlap = iou_matrix(ref.boxes, other.boxes)
            for i in np.flatnonzero(ref.scores > 0.3):
                j = int(overlap[i].argmax())
                if overlap[i, j] > 0.5:
                    height = ref.boxes[i, 3] - ref.boxes[i, 1]
                    ratios.append((float((other.boxes[j, 3] - other.boxes[j, 1]) / height), float(height)))
        r = np.array(ratios).reshape(-1, 2)
        print(f"{name}: {len(r)} boxes, height against full depth at full size: {summary(r[:, 0])}")
        for low, high in [(0, 40), (40, 80), (80, 10_000)]:
            band = (r[:, 1] >= low) & (r[:, 1] < high)
            if band.any():
                print(f"  full-depth height {low}-{high} px: {band.sum()} boxes, {summary(r[band, 0])}")


def summary(ratios: np.ndarray) -> str:
    if not len(ratios):
        return "no boxes"
    return "median {:.3f}, p10 {:.3f}, p90 {:.3f}".format(np.median(ratios), *np.percentile(ratios, [10, 90]))


if __name__ == "__main__":
    main()
