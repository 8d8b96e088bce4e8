"""Depth policies: how deep a frame goes.

- fixed: always the configured exit (for baselines and benchmarks).
- confidence: start at the shallowest exit and go deeper only while the current exit is unsure:
  it is sure when at most `max_uncertain` of its detections score in [low, high), i.e. every
  object it sees is either clearly there or clearly not. It never goes deeper than the deadline
  allows.
- deadline: the deepest exit whose estimated remaining cost (p90 of recent runs of each part)
  still ends `margin_ms` before the frame's deadline, planned again after every trunk stage, so a
  stage that ran slow (a CPU suddenly busy) makes the frame stop at a shallower exit.

- adaptive: over time (perception.detection.temporal): no network at all on routine frames (the
  tracks moved by optical flow), the network chosen by a gate on difficulty and risk; its network
  frames run the deadline policy. Needs a frame sequence, so it is not a per-frame policy here.

Every policy respects the depth ceiling commanded by the watchdog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np

from perception.config import Fraction, NonNegativeInt, Range
from perception.detection.adaptive import AdaptiveDetector, FrameInference
from perception.latency import now_ns


@dataclass(frozen=True)
class PolicyConfig:
    kind: Literal["fixed", "confidence", "deadline", "adaptive"] = "deadline"
    exit: Annotated[int, Range(-1, 63)] = -1  # fixed: the exit to use; -1 is the deepest
    low: Fraction = 0.1  # confidence: detections scoring in [low, high) are uncertain
    high: Fraction = 0.5
    max_uncertain: NonNegativeInt = 0
    margin_ms: Annotated[float, Range(0, 1000)] = 2.0  # deadline (and confidence when going deeper): slack kept before the deadline

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"need low < high, got low {self.low}, high {self.high}")


@dataclass(frozen=True)
class Outcome:
    exit_index: int
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    exits_evaluated: tuple[int, ...]


def _fits(detector: AdaptiveDetector, inference: FrameInference, exit_index: int, deadline_ns: int | None,
          margin_ns: int) -> bool:
    if deadline_ns is None:
        return True
    return now_ns() + detector.remaining_cost_ns(inference, exit_index) + margin_ns <= deadline_ns


def _deepest_fitting(detector: AdaptiveDetector, inference: FrameInference, ceiling: int, deadline_ns: int | None,
                     margin_ns: int) -> int:
    return next((k for k in range(ceiling, -1, -1) if _fits(detector, inference, k, deadline_ns, margin_ns)), 0)


def run_policy(
    detector: AdaptiveDetector,
    inference: FrameInference,
    config: PolicyConfig,
    deadline_ns: int | None = None,
    max_exit: int | None = None,
    score_threshold: float | None = None,
) -> Outcome:
    """Run `inference` to the exit the policy chooses; returns detections above `score_threshold`
    (default: the detector's)."""
    threshold = detector.score_threshold if score_threshold is None else score_threshold
    if config.kind == "adaptive":
        raise ValueError("the adaptive policy runs over a sequence: use perception.detection.temporal.TemporalDetector")
    deepest = detector.exit_count - 1
    ceiling = deepest if max_exit is None else max(0, min(max_exit, deepest))
    margin_ns = int(config.margin_ms * 1e6)

    if config.kind == "fixed":
        chosen = ceiling if config.exit < 0 else min(config.exit, ceiling)
        return _finish(detector, inference, chosen, (chosen,), threshold)

    if config.kind == "deadline":
        chosen = _deepest_fitting(detector, inference, ceiling, deadline_ns, margin_ns)
        while inference.stages_done < detector.manifest.exits[chosen].after_stage:
            detector.run_stages(inference, inference.stages_done + 1)
            chosen = _deepest_fitting(detector, inference, chosen, deadline_ns, margin_ns)
        return _finish(detector, inference, chosen, (chosen,), threshold)

    evaluated = []
    exit_index = 0
    while True:
        evaluated.append(exit_index)
        raw = detector.run_exit(inference, exit_index)
        boxes, scores, class_ids = detector.decode(inference, raw, min(config.low, threshold))
        uncertain = int(((scores >= config.low) & (scores < config.high)).sum())
        go_deeper = (uncertain > config.max_uncertain and exit_index < ceiling
                     and _fits(detector, inference, exit_index + 1, deadline_ns, margin_ns))
        if not go_deeper:
            keep = scores >= threshold
            return Outcome(exit_index, boxes[keep], scores[keep], class_ids[keep], tuple(evaluated))
        exit_index += 1


def _finish(detector: AdaptiveDetector, inference: FrameInference, exit_index: int, evaluated: tuple[int, ...],
            score_threshold: float) -> Outcome:
    boxes, scores, class_ids = detector.decode(inference, detector.run_exit(inference, exit_index), score_threshold)
    return Outcome(exit_index, boxes, scores, class_ids, evaluated)
