"""Score a detector (any exit, any depth policy) on an annotated video with COCO-style AP."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from perception.config import ConfigError
from perception.detection.classes import shown_classes
from perception.detection.network import StagedNetwork
from perception.evaluation.coco_ap import APResult, Detection, GroundTruth, evaluate
from perception.latency import now_ns, percentiles_ms
from perception.sources import SourceError, VideoFileSource

# COCO evaluation conventions for YOLOX: keep low-scoring boxes so the whole PR curve counts.
EVAL_SCORE_THRESHOLD = 0.01
EVAL_NMS_THRESHOLD = 0.65


@dataclass(frozen=True)
class Annotations:
    truths: list[GroundTruth]
    image_for_frame: dict[int, int]  # video frame index -> COCO image id
    category_for_class: dict[int, int]  # detector class id -> COCO category id


def load_annotations(path: Path, class_names: list[str]) -> Annotations:
    """COCO json whose images carry `frame_index_in_vtest_avi` (or `frame_index`); categories
    are matched to the detector's classes by name."""
    try:
        data = json.loads(Path(path).read_text())
        frame_key = "frame_index_in_vtest_avi" if "frame_index_in_vtest_avi" in data["images"][0] else "frame_index"
        image_for_frame = {int(im[frame_key]): int(im["id"]) for im in data["images"]}
        missing = [c["name"] for c in data["categories"] if c["name"] not in class_names]
        if missing:
            raise ConfigError(f"{path}: annotates {', '.join(map(str, missing))}, which the detector's model has no "
                              f"class for (its classes: {shown_classes(class_names)})")
        category_for_class = {class_names.index(c["name"]): int(c["id"]) for c in data["categories"]}
        truths = [GroundTruth(int(a["image_id"]), int(a["category_id"]), tuple(map(float, a["bbox"])), bool(a.get("iscrowd", 0)))
                  for a in data["annotations"]]
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"{path}: annotation file not found") from None
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not COCO annotations with frame indices ({type(exc).__name__}: {exc})") from None
    return Annotations(truths, image_for_frame, category_for_class)


@dataclass
class EvalReport:
    ap: APResult
    exit_histogram: Counter = field(default_factory=Counter)
    detector_ms: list[float] = field(default_factory=list)  # per frame: preprocessing to final detections

    def as_dict(self) -> dict:
        times = np.array(self.detector_ms)
        stats = {f"ms_{k}": round(v, 3) for k, v in percentiles_ms((times * 1e6).astype(np.int64), (50, 99)).items()
                 if k in ("p50", "p99", "mean")}
        return {**self.ap.as_dict(), "frames": len(times), "exit_histogram": dict(sorted(self.exit_histogram.items())),
                **stats}


def evaluate_on_video(detector: StagedNetwork, video: Path, annotations: Annotations, exit_index: int = -1,
                      pixels: int | None = None, passes: int = 1) -> EvalReport:
    """Run every annotated frame on its own to `exit_index` at the input budget `pixels` and score it.

    Each frame runs once with the detector's own (runtime) thresholds, timed; the exit's raw output
    is then decoded again at COCO evaluation thresholds for AP, so accuracy and latency describe the
    same work. Extra passes only add timing samples.
    """
    frames = annotated_frames(video, annotations)
    report = EvalReport(ap=APResult(0, 0, 0, {}))
    detections: list[Detection] = []
    for image_id, frame in frames:
        start = now_ns()
        detected = detector.detect(frame, exit_index, pixels)
        report.detector_ms.append((now_ns() - start) / 1e6)
        report.exit_histogram[detected.exit_index] += 1
        inference = detected.inference
        boxes, scores, class_ids = detector.decode(inference, inference.raw_exits[detected.exit_index],
                                                   EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD)
        detections += coco_detections(image_id, boxes, scores, class_ids, annotations)
    for _ in range(passes - 1):
        report.detector_ms += time_frames(detector, frames, exit_index, pixels)
    report.ap = evaluate(annotations.truths, detections)
    return report


def time_frames(detector: StagedNetwork, frames: list[tuple[int, np.ndarray]], exit_index: int = -1,
                pixels: int | None = None) -> list[float]:
    """Milliseconds per frame, preprocessing to final detections, of one pass."""
    times = []
    for _, frame in frames:
        start = now_ns()
        detector.detect(frame, exit_index, pixels)
        times.append((now_ns() - start) / 1e6)
    return times


def coco_detections(image_id: int, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    annotations: Annotations) -> list[Detection]:
    """Detections of the annotated categories as COCO boxes (x, y, w, h) of one image."""
    found = []
    for box, score, class_id in zip(boxes, scores, class_ids):
        category = annotations.category_for_class.get(int(class_id))
        if category is not None:
            x1, y1, x2, y2 = map(float, box)
            found.append(Detection(image_id, category, (x1, y1, x2 - x1, y2 - y1), float(score)))
    return found


def read_frames(video: Path) -> Iterator[tuple[int, np.ndarray, int]]:
    """(frame index, frame, media_ns) of every frame of `video`, in order; a bad file is a ConfigError."""
    try:
        source = VideoFileSource(video)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    with source:
        index = 0
        while (item := source.read()) is not None:
            frame, media_ns = item
            yield index, frame.copy(), media_ns
            index += 1


def annotated_frames(video: Path, annotations: Annotations) -> list[tuple[int, np.ndarray]]:
    last = max(annotations.image_for_frame)
    frames = []
    for frame_index, frame, _ in read_frames(video):
        if frame_index > last:
            break
        if frame_index in annotations.image_for_frame:
            frames.append((annotations.image_for_frame[frame_index], frame))
    if len(frames) != len(annotations.image_for_frame):
        raise ConfigError(f"{video}: has {len(frames)} of the {len(annotations.image_for_frame)} annotated frames")
    return frames
