"""Multi-object tracking metrics (MOTA, MOTP, IDF1, ID switches) with py-motmetrics, and the tracker
run on an annotated video.

MOT csv: one box per line, `frame, id, x, y, w, h, flag[, ...]`; frame is 1-based (frame N is the
video's frame index N - 1), flag 1 counts, flag 0 marks an ignored region (a person the annotators
did not want scored: partly visible, a reflection, ...). Boxes match at IoU >= 0.5.

Ignored regions, as the MOTChallenge devkit does it: in each frame every hypothesis is first matched
one-to-one to all ground truth boxes, counted and ignored together (optimal assignment on IoU,
>= 0.5); hypotheses that fall on an ignored box are removed, the rest are scored against the
counted boxes. So a hypothesis on an ignored person is neither a false positive nor a true positive,
and it cannot steal a counted box from another hypothesis either.

motmetrics (`dev` extra) is imported only when metrics are computed; the vehicle never needs it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from perception.config import ConfigError
from perception.evaluation import DEV_MOT, DEV_VIDEO
from perception.tracking.association import iou_matrix
from perception.tracking.tracker import Tracker, TrackerConfig

MATCH_IOU = 0.5

MotBox = tuple[int, float, float, float, float, int]  # (track id, x, y, w, h, flag)


def _motmetrics():
    """Import motmetrics 1.4, which calls np.asfarray (removed in numpy 2.0): give it numpy's own
    equivalent first, only if it is missing, so nothing changes on numpy 1.x."""
    if not hasattr(np, "asfarray"):
        np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)
    import motmetrics

    return motmetrics


def load_mot_csv(path: str | Path) -> dict[int, list[MotBox]]:
    """{frame (1-based): [(id, x, y, w, h, flag), ...]} from a MOT csv; a missing flag column means 1."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: MOT csv not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read MOT csv ({exc})") from None
    frames: dict[int, list[MotBox]] = {}
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        frame, box = _parse_row(row, path, line_no)
        frames.setdefault(frame, []).append(box)
    return frames


def _parse_row(row: list[str], path: Path, line_no: int) -> tuple[int, MotBox]:
    where = f"{path}: line {line_no}"
    if len(row) < 6:
        raise ConfigError(f"{where}: need frame, id, x, y, w, h[, flag], got {len(row)} columns")
    try:
        values = [float(v) for v in row[:7]]
    except ValueError:
        raise ConfigError(f"{where}: not a number in {','.join(row[:7])!r}") from None
    frame, track_id, x, y, w, h = values[:6]
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{where}: values must be finite")
    if frame != int(frame) or frame < 1 or track_id != int(track_id):
        raise ConfigError(f"{where}: frame must be an integer >= 1 and id an integer, got {row[0]}, {row[1]}")
    if w <= 0 or h <= 0:
        raise ConfigError(f"{where}: width and height must be > 0, got {w}, {h}")
    flag = 1 if len(values) < 7 or values[6] != 0 else 0
    return int(frame), (int(track_id), x, y, w, h, flag)


def mot_metrics(gt: dict[int, list[MotBox]], hypotheses: dict[int, list]) -> dict:
    """CLEAR MOT and identity metrics over every frame that has ground truth or hypotheses.

    `hypotheses`: {frame: [(id, x, y, w, h, ...), ...]} (a flag there is not used). Returns mota,
    motp (mean IoU of matched pairs, higher is better, as MOTChallenge prints it), idf1,
    id_switches, fp, fn, num_frames, num_objects, num_ignored_hypotheses."""
    mm = _motmetrics()
    accumulator = mm.MOTAccumulator(auto_id=False)
    ignored_hypotheses = 0
    frames = sorted(set(gt) | set(hypotheses))
    for frame in frames:
        truth = gt.get(frame, [])
        counted = [b for b in truth if b[5] != 0]
        ignored = [b for b in truth if b[5] == 0]
        hyps = list(hypotheses.get(frame, []))
        kept = _without_ignored(hyps, counted, ignored)
        ignored_hypotheses += len(hyps) - len(kept)
        distances = mm.distances.iou_matrix(_xywh(counted), _xywh(kept), max_iou=1 - MATCH_IOU)
        accumulator.update([b[0] for b in counted], [h[0] for h in kept], distances, frameid=frame)
    summary = mm.metrics.create().compute(
        accumulator, metrics=["mota", "motp", "idf1", "num_switches", "num_false_positives", "num_misses",
                              "num_frames", "num_objects"], name="all")
    row = summary.loc["all"]
    return {
        "mota": float(row["mota"]), "motp": 1.0 - float(row["motp"]), "idf1": float(row["idf1"]),
        "id_switches": int(row["num_switches"]), "fp": int(row["num_false_positives"]), "fn": int(row["num_misses"]),
        "num_frames": len(frames), "num_objects": int(row["num_objects"]), "num_ignored_hypotheses": ignored_hypotheses,
    }


def _xywh(boxes: list) -> np.ndarray:
    return np.array([b[1:5] for b in boxes], np.float64).reshape(-1, 4)


def _xyxy(boxes: list) -> np.ndarray:
    xywh = _xywh(boxes)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _without_ignored(hyps: list, counted: list, ignored: list) -> list:
    """The hypotheses not matched to an ignored box when matched to all ground truth at once."""
    if not ignored or not hyps:
        return hyps
    overlap = iou_matrix(_xyxy(counted + ignored), _xyxy(hyps))
    allowed = overlap >= MATCH_IOU
    rows, cols = linear_sum_assignment(np.where(allowed, -overlap, 0.0))
    on_ignored = {int(c) for r, c in zip(rows, cols) if allowed[r, c] and r >= len(counted)}
    return [h for i, h in enumerate(hyps) if i not in on_ignored]


# ---- the tracker on an annotated video ----

@dataclass(frozen=True)
class FrameDetections:
    t_ns: int
    boxes: np.ndarray  # xyxy float32
    scores: np.ndarray
    class_ids: np.ndarray


def detect_video(video: str | Path, score_threshold: float, class_id: int = 0, threads: int = 2,
                 model: str = "yolox_nano_exits.json") -> tuple[list[FrameDetections], tuple[int, int]]:
    """YOLOX-nano at full depth (fixed deepest exit) on every frame of `video`, detections of one class.
    Returns the frames' detections (timestamps from the video's frame rate) and (width, height)."""
    from perception.detection.builder import DetectorSettings, build_network
    from perception.detection.manifest import WEIGHTS_DIR
    from perception.engines import EngineConfig
    from perception.evaluation.detector_eval import read_frames

    detector = build_network(DetectorSettings(model=WEIGHTS_DIR / model, engine=EngineConfig(threads=threads)),
                             score_threshold=score_threshold)
    frames, size = [], (0, 0)
    for _, image, media_ns in read_frames(Path(video)):
        size = (image.shape[1], image.shape[0])
        outcome = detector.detect(image)
        keep = outcome.class_ids == class_id
        frames.append(FrameDetections(media_ns, outcome.boxes[keep], outcome.scores[keep], outcome.class_ids[keep]))
    return frames, size


def track_detections(frames: list[FrameDetections], image_size: tuple[int, int], config: TrackerConfig
                     ) -> tuple[dict[int, list[MotBox]], list[float]]:
    """Feed a fresh tracker frame by frame; returns MOT hypotheses (frame k -> MOT frame k + 1: the
    confirmed tracks matched this frame, with their boxes) and the tracker's milliseconds per frame."""
    tracker = Tracker(config)
    hypotheses: dict[int, list[MotBox]] = {}
    times_ms = []
    for index, frame in enumerate(frames):
        start = time.perf_counter_ns()
        update = tracker.update(frame.boxes, frame.scores, frame.class_ids, frame.t_ns, image_size)
        times_ms.append((time.perf_counter_ns() - start) / 1e6)
        hypotheses[index + 1] = [(t.track_id, float(t.box[0]), float(t.box[1]), float(t.box[2] - t.box[0]),
                                  float(t.box[3] - t.box[1]), 1) for t in update.tracks]
    return hypotheses, times_ms


def track_video(video: str | Path = DEV_VIDEO, gt_path: str | Path = DEV_MOT, config: TrackerConfig | None = None,
                score_threshold: float = 0.4, threads: int = 2) -> dict:
    """Detect (full depth, person only, scores >= score_threshold), track and score against the MOT
    ground truth for the frames it covers. Returns the metrics plus the tracker's per-frame cost."""
    gt = load_mot_csv(gt_path)
    frames, size = detect_video(video, score_threshold, threads=threads)
    frames = frames[:max(gt)]  # score only the annotated frames
    hypotheses, times_ms = track_detections(frames, size, config or TrackerConfig())
    metrics = mot_metrics(gt, hypotheses)
    times = np.array(times_ms)
    return {**metrics, "tracker_ms_mean": float(times.mean()), "tracker_ms_p99": float(np.percentile(times, 99))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Track people on an annotated video and print MOT metrics (JSON).")
    parser.add_argument("--video", default=str(DEV_VIDEO))
    parser.add_argument("--gt", default=str(DEV_MOT))
    parser.add_argument("--score", type=float, default=0.4, help="detector score threshold fed to the tracker")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrackerConfig field")
    args = parser.parse_args(argv)
    from perception.config import parse_override

    try:
        config = TrackerConfig(**dict(parse_override(o) for o in args.set))
        result = track_video(args.video, args.gt, config, args.score, args.threads)
    except (ConfigError, ValueError, TypeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
