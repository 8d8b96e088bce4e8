"""Score a detector over a whole video in order, as it runs on a vehicle: every frame goes through
the detector (policy, network or flow, tracker), annotated frames are scored.

A propagated frame depends on every frame before it, so policies cannot be scored on annotated
frames alone: every frame of the clip is processed in order, on the clip's own timeline (media
time), and the detector's time per frame covers everything it does for that frame (flow and
signals, network, tracker). Accuracy: COCO-style AP on the annotated frames (perception.evaluation.
coco_ap, equal to pycocotools) and, with MOT ground truth, MOTA / IDF1 / ID switches of the tracks
(perception.evaluation.mot, needs the dev extra's motmetrics).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.config import ConfigError
from perception.detection.frames import FrameDetector
from perception.evaluation.coco_ap import APResult, Detection, evaluate
from perception.evaluation.detector_eval import Annotations, coco_detections, read_frames
from perception.latency import now_ns, percentiles_ms
from perception.messages import level_name
from perception.progress import progress_bar

MOT_SCORE_THRESHOLD = 0.4  # tracks reported for MOT metrics: as the IoU-matcher baseline


@dataclass
class SequenceReport:
    name: str
    ap: APResult
    detector_ms: list[float] = field(default_factory=list)  # every frame, in order
    levels: Counter = field(default_factory=Counter)  # "propagate", "exit0", ... -> frames
    sizes: Counter = field(default_factory=Counter)  # network input "WxH" -> frames
    reasons: Counter = field(default_factory=Counter)  # why the network ran
    resets: Counter = field(default_factory=Counter)
    tracking: dict | None = None  # MOTA, IDF1, ID switches, ... when MOT ground truth was given
    deadline_ms: float | None = None  # each frame's deadline, from when it was handed over
    late: int = 0  # frames whose detector time passed that deadline

    def as_dict(self) -> dict:
        times = np.array(self.detector_ms)
        stats = {f"ms_{k}": round(v, 3) for k, v in percentiles_ms((times * 1e6).astype(np.int64), (50, 99)).items()
                 if k in ("p50", "p99", "mean")}
        return {"name": self.name, **self.ap.as_dict(), "frames": len(times), **stats,
                "levels": dict(sorted(self.levels.items())), "sizes": dict(self.sizes.most_common()), "network_reasons": dict(self.reasons.most_common()),
                "resets": dict(self.resets), **({"tracking": self.tracking} if self.tracking is not None else {}),
                **({"deadline_ms": self.deadline_ms, "late": self.late} if self.deadline_ms is not None else {})}


def evaluate_sequence(name: str, detector: FrameDetector, video: Path, annotations: Annotations,
                      mot_truth: dict | None = None, person_class: int = 0, max_frames: int | None = None,
                      progress: bool = False, deadline_ms: float | None = None,
                      max_exit: int | None = None) -> SequenceReport:
    """Run every frame of `video` in order through a fresh `detector` and score it.

    `detector` should decode at COCO evaluation thresholds (a low score threshold), so that AP sees
    the whole precision-recall curve; tracks for MOT metrics are the outputs with a track id and a
    score of at least MOT_SCORE_THRESHOLD. `max_frames`: only the clip's first frames (and their
    annotations) count. `progress`: a progress bar of frames on stderr (perception.progress).
    `deadline_ms`: each frame must be done this long after it is handed over, as a vehicle's frame
    must within its budget; the policy then chooses size and depth against the clock (accuracy
    under a time budget; None: no deadline, what the sweeps measure). `max_exit`: the watchdog's
    depth ceiling held on every frame (what a pipeline running late gets)."""
    report = SequenceReport(name, APResult(0, 0, 0, {}), deadline_ms=deadline_ms)
    detections: list[Detection] = []
    hypotheses: dict[int, list[tuple[int, float, float, float, float]]] = {}
    bar = progress_bar(max_frames or max(annotations.image_for_frame, default=-1) + 1, "evaluated", "frame") if progress else None
    for frame_index, frame, media_ns in read_frames(video):
        if max_frames is not None and frame_index >= max_frames:
            break
        if bar is not None:
            bar.update()
        start = now_ns()
        outcome = detector.process(frame, media_ns, None if deadline_ms is None else start + int(deadline_ms * 1e6),
                                   max_exit)
        report.detector_ms.append((now_ns() - start) / 1e6)
        report.late += deadline_ms is not None and report.detector_ms[-1] > deadline_ms
        out = outcome.output
        image_id = annotations.image_for_frame.get(frame_index)
        if image_id is not None:
            detections += coco_detections(image_id, out.boxes, out.scores, out.class_ids, annotations)
        keep = (out.track_ids > 0) & (out.class_ids == person_class) & (out.scores >= MOT_SCORE_THRESHOLD)
        hypotheses[frame_index + 1] = [(int(t), float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1]))
                                       for t, b in zip(out.track_ids[keep], out.boxes[keep])]
    if bar is not None:
        bar.close()
    scored = {image for frame, image in annotations.image_for_frame.items() if frame < len(report.detector_ms)}
    if max_frames is None and len(scored) < len(annotations.image_for_frame):
        raise ConfigError(f"{video}: has {len(report.detector_ms)} frames, annotations reach frame "
                          f"{max(annotations.image_for_frame)}")
    report.ap = evaluate([t for t in annotations.truths if t.image_id in scored], detections)
    report.levels = Counter({level_name(level): n for level, n in detector.levels.items()})
    report.sizes = detector.sizes
    report.reasons = Counter({k: v for k, v in detector.reasons.items() if k not in ("propagate", "between keyframes")})
    report.resets = detector.resets
    if mot_truth is not None:
        from perception.evaluation.mot import mot_metrics

        report.tracking = mot_metrics({f: rows for f, rows in mot_truth.items() if f <= len(report.detector_ms)},
                                      hypotheses)
    return report
