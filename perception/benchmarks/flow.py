"""Cost and accuracy of moving boxes by sparse optical flow (perception/tracking/flow.py).

    python -m perception.benchmarks.flow [--frames 400] [--sweep] [--set key=value ...] [--json F]

On the PETS09 dev clip (recordings/pets09_vtest_dev.avi: vtest.avi frames 0-399, 768x576, 10 fps,
static camera, pedestrians) and its ground truth (recordings/pets09_dev_gt.txt, MOT csv: frame N,
1-based, is video frame N-1; only rows with frame <= 400 and flag 1 are read):

- cost: time per frame of prepare() + propagate() for 10 boxes (the frame's ground-truth boxes,
  repeated to make 10), p50 / p90 / mean in ms on this CPU; and the part of it that is LK building
  its image pyramids (4 per propagate: both images, forward and backward call), i.e. what reusing one
  pyramid per frame would save if OpenCV's Python binding allowed it.
- accuracy: every ground-truth box of frame k is carried to k+1..k+4 by chained flow (the moved
  boxes of k+1 are moved again to k+2, ...); mean IoU with the ground-truth box of the same id at
  each step, next to "hold still" (the box of frame k unmoved) as the baseline; and the share of
  boxes whose flow was ok.
- frame_change: its distribution on PETS09 (static camera), on recordings/udacity_dashcam.mp4
  (moving car, 38 frames, resized to 768x576) and on hard cuts between the two.

--sweep runs a grid of configurations (scale, grid, window, levels, fb threshold) for both cost
and accuracy. Tune only on these frames: the rest of the sequence is withheld for evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from perception import REPO
from perception.evaluation import DEV_MOT, DEV_VIDEO
from perception.evaluation.detector_eval import read_frames as video_frames
from perception.evaluation.mot import load_mot_csv
from perception.tracking.flow import BoxFlow, FlowConfig, FlowFrame, frame_change
from perception.tracking.association import iou_matrix

DASHCAM = REPO / "recordings" / "udacity_dashcam.mp4"
DEV_FRAMES = 400  # the tuning frames; never read ground truth past them
HORIZON = 4
COST_BOXES = 10

SWEEP = [dict(scale=s, grid=g) for s in (1.0, 0.5) for g in (3, 4)] + [
    dict(window=15), dict(window=15, max_fb_error_px=1.0, min_points=4),  # the first probe's LK settings
    dict(max_fb_error_px=1.0), dict(max_fb_error_px=2.0), dict(min_points=4), dict(grid=4, min_points=4),
    dict(estimate_scale=False), dict(scale_consistency=0.0), dict(levels=2), dict(inset=0.1),
    dict(scale=0.25), dict(scale=0.25, window=7),
]


def load_ground_truth(path: Path = DEV_MOT, frames: int = DEV_FRAMES) -> dict[int, dict[int, np.ndarray]]:
    """video frame index -> {id: xyxy} for the first `frames` frames (flag 1 rows only)."""
    truth: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    for frame, boxes in load_mot_csv(path).items():
        if frame <= frames:
            for ident, x, y, w, h, flag in boxes:
                if flag == 1:
                    truth[frame - 1][ident] = np.array([x, y, x + w, y + h])
    return dict(truth)


def read_frames(video: Path, limit: int, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """The first `limit` frames of `video`, resized to `size` (width, height) if given."""
    for index, frame, _ in video_frames(video):
        if index >= limit:
            return
        yield frame if size is None else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) xyxy arrays: box i of `a` with box i of `b`."""
    return np.diagonal(iou_matrix(a, b)).copy()


def accuracy(config: FlowConfig, frames: int = DEV_FRAMES, horizon: int = HORIZON) -> dict:
    """Mean IoU per step of chained flow and of holding still, and the ok share per step."""
    truth = load_ground_truth(frames=frames)
    flow = BoxFlow(config)
    chains: list[dict] = []  # each: ids, start boxes, current boxes, age
    flow_iou, hold_iou, ok_share = ([[] for _ in range(horizon)] for _ in range(3))
    previous: FlowFrame | None = None
    for index, image in enumerate(read_frames(DEV_VIDEO, frames)):
        current = flow.prepare(image)
        gt = truth.get(index, {})
        for chain in chains:
            result = flow.propagate(previous, current, chain["boxes"])
            chain["boxes"], chain["age"] = result.boxes, chain["age"] + 1
            present = [i for i, ident in enumerate(chain["ids"]) if ident in gt]
            if present:
                target = np.stack([gt[chain["ids"][i]] for i in present])
                step = chain["age"] - 1
                flow_iou[step].extend(iou(result.boxes[present].astype(np.float64), target))
                hold_iou[step].extend(iou(chain["start"][present], target))
                ok_share[step].extend(result.ok[present])
        chains = [c for c in chains if c["age"] < horizon]
        if gt:
            ids = sorted(gt)
            start = np.stack([gt[i] for i in ids])
            chains.append(dict(ids=ids, start=start, boxes=start.astype(np.float32), age=0))
        previous = current
    mean = lambda v: [round(float(np.mean(s)), 4) for s in v]  # noqa: E731
    return {"flow_iou": mean(flow_iou), "hold_iou": mean(hold_iou), "ok": mean(ok_share),
            "pairs": [len(s) for s in flow_iou]}


def cost(config: FlowConfig, frames: int = 200) -> dict:
    """ms per frame of prepare + propagate for COST_BOXES boxes, and LK's own pyramid building in it."""
    truth = load_ground_truth(frames=frames)
    flow = BoxFlow(config)
    total, pyramids = [], []
    previous, boxes = None, np.zeros((0, 4))
    for index, image in enumerate(read_frames(DEV_VIDEO, frames)):
        if truth.get(index):
            gt = np.stack(list(truth[index].values()))
            boxes = gt[np.arange(COST_BOXES) % len(gt)]
        start = time.perf_counter_ns()
        current = flow.prepare(image)
        if previous is not None:
            flow.propagate(previous, current, boxes)
        total.append(time.perf_counter_ns() - start)
        if previous is not None:
            pyramids.append(_pyramid_ns(current.gray, config))
        previous = current
    ms = np.array(total[1:]) / 1e6  # the first frame has nothing to propagate
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p90": round(float(np.percentile(ms, 90)), 3),
            "mean": round(float(ms.mean()), 3), "lk_pyramids_p50": round(float(np.median(pyramids)) / 1e6, 3)}


def _pyramid_ns(gray: np.ndarray, config: FlowConfig) -> int:
    """Time LK spends building pyramids in one propagate: 2 calls x 2 images (derivatives for the first)."""
    start = time.perf_counter_ns()
    for derivatives in (True, False, True, False):
        cv2.buildOpticalFlowPyramid(gray, (config.window, config.window), config.levels, withDerivatives=derivatives)
    return time.perf_counter_ns() - start


def change_stats(config: FlowConfig, frames: int = DEV_FRAMES) -> dict:
    """frame_change between consecutive frames of each recording, and across cuts between them."""
    flow = BoxFlow(config)
    size = (768, 576)
    pets = [flow.prepare(f) for f in read_frames(DEV_VIDEO, frames)]
    dash = [flow.prepare(f) for f in read_frames(DASHCAM, 1000, size)]
    stats = lambda v: {"p50": round(float(np.median(v)), 2), "p99": round(float(np.percentile(v, 99)), 2),  # noqa: E731
                       "max": round(float(np.max(v)), 2)}
    cuts = [frame_change(pets[i], dash[j]) for i in range(0, len(pets), 40) for j in range(0, len(dash), 8)]
    return {"pets09": stats([frame_change(a, b) for a, b in zip(pets, pets[1:])]),
            "dashcam": stats([frame_change(a, b) for a, b in zip(dash, dash[1:])]),
            "cut": {"min": round(min(cuts), 2), "p50": round(float(np.median(cuts)), 2), "max": round(max(cuts), 2)}}


def _parse_sets(items: list[str]) -> dict:
    fields = {f.name: f.type for f in dataclasses.fields(FlowConfig)}
    values = {}
    for item in items:
        key, _, text = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown FlowConfig key {key!r}; known: {', '.join(fields)}")
        default = getattr(FlowConfig(), key)
        values[key] = (text.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(text)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=DEV_FRAMES, help="dev frames to use (at most 400)")
    parser.add_argument("--sweep", action="store_true", help="cost and accuracy for a grid of configurations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FlowConfig override")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    frames = min(args.frames, DEV_FRAMES)
    base = _parse_sets(args.set)
    variants = [{**base, **v} for v in SWEEP] if args.sweep else [base]
    rows = []
    for overrides in variants:
        config = FlowConfig(**overrides)
        row = {"config": overrides or "defaults", "cost_ms": cost(config, min(frames, 200)),
               "accuracy": accuracy(config, frames)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    change = change_stats(FlowConfig(**base), frames)
    print(json.dumps({"frame_change": change}))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "frame_change": change}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
