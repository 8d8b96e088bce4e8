"""Turning detections into PROCEED / SLOW / BRAKE, with a machine-readable reason.

An object matters when its class is one the vehicle must not hit, its score is high enough and
its ground contact (the bottom edge of its box) lies in the ego path, a polygon in normalised
image coordinates. Two proxies say how urgent it is, since a monocular detector has no range:
- size: box height as a fraction of image height (near objects are tall);
- time to collision: TTC = 1 / (d ln h / dt), the time until the box would fill the view at its
  current rate of growth, fitted over the recent heights of the object's track. Tracks come with
  the detections (the detector's tracker, perception/tracking): this node keeps only each track's
  recent heights, never matches boxes itself. An untracked detection (track id 0) has no history.
Escalation is immediate; de-escalation waits `release_frames` consecutive calmer frames, so the
decision does not flicker between frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.config import ConfigError, from_mapping, load_yaml

from perception.messages import Action, Decision, Detections, Reason, Stamp, Target

DEFAULT_ROI = [(0.46, 0.58), (0.54, 0.58), (0.80, 1.0), (0.20, 1.0)]  # the ego lane of a forward camera
DEFAULT_CLASSES = ["person", "bicycle", "car", "motorbike", "bus", "truck", "dog", "horse", "cow"]


@dataclass(frozen=True)
class DecisionRules:
    roi: list[tuple[float, float]] = field(default_factory=lambda: list(DEFAULT_ROI))
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    min_score: float = 0.4
    min_in_path: float = 0.3  # fraction of the box's bottom edge inside the ego path
    slow_height: float = 0.15  # box height / image height
    brake_height: float = 0.35
    slow_ttc_s: float = 4.0
    brake_ttc_s: float = 2.0
    release_frames: int = 5
    ttc_frames: int = 8  # samples in the growth-rate fit
    min_growth: float = 0.05  # box growth over the fit below which TTC is not trusted (pixel jitter)

    def __post_init__(self) -> None:
        if len(self.roi) < 3 or not all(0 <= x <= 1 and 0 <= y <= 1 for x, y in self.roi):
            raise ValueError("roi must be a polygon of at least 3 points in normalised [0, 1] coordinates")
        if not 0 < self.slow_height <= self.brake_height:
            raise ValueError("need 0 < slow_height <= brake_height")
        if not 0 < self.brake_ttc_s <= self.slow_ttc_s:
            raise ValueError("need 0 < brake_ttc_s <= slow_ttc_s")
        if self.release_frames < 0 or self.ttc_frames < 2 or self.min_growth < 0:
            raise ValueError("release_frames and min_growth must be >= 0, ttc_frames >= 2")


def load_decision_rules(path: Path) -> DecisionRules:
    """The `rules` section of a decision node's config file (the detector's risk gate and the
    benchmarks read the same rules as the decision node)."""
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return from_mapping(DecisionRules, data.get("rules", {}), source=f"{path}: rules", base_dir=Path(path).parent)


def fraction_in_polygon(x1: float, x2: float, y: float, polygon: np.ndarray, samples: int = 9) -> float:
    """Fraction of the horizontal segment (x1..x2, y) inside the polygon (even-odd rule)."""
    xs = np.linspace(x1, x2, samples)
    inside = np.zeros(samples, bool)
    px, py = polygon[:, 0], polygon[:, 1]
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    for ax, ay, bx, by in zip(px, py, qx, qy):
        if (ay > y) != (by > y):
            cross_x = ax + (y - ay) * (bx - ax) / (by - ay)
            inside ^= xs < cross_x
    return float(inside.mean())


@dataclass
class _History:
    """Recent (media_ns, box height) samples of one track, for its growth rate."""

    samples: list[tuple[int, float]]

    def ttc_s(self, min_growth: float) -> float:
        """Time to collision from the growth rate of the box height; inf unless it grew by at
        least `min_growth` over the samples (a pixel of jitter on a small box is not closing)."""
        if len(self.samples) < 2 or self.samples[-1][1] < self.samples[0][1] * (1 + min_growth):
            return math.inf
        t = np.array([c for c, _ in self.samples], np.float64) / 1e9
        log_h = np.log([max(h, 1e-3) for _, h in self.samples])
        if t[-1] - t[0] <= 0:
            return math.inf
        rate = np.polyfit(t - t[0], log_h, 1)[0]  # d ln h / dt
        return 1.0 / rate if rate > 1e-6 else math.inf


class TrackHistories:
    """The last `length` heights of every track seen in the last frame; tracks that vanish are forgotten."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._by_track: dict[int, _History] = {}

    def update(self, track_ids: np.ndarray, boxes: np.ndarray, t_ns: int) -> list[_History]:
        kept: dict[int, _History] = {}
        histories = []
        for track_id, box in zip(track_ids, boxes):
            sample = (t_ns, float(box[3] - box[1]))
            if track_id == 0:  # untracked: no past
                histories.append(_History([sample]))
                continue
            history = self._by_track.get(int(track_id)) or _History([])
            history.samples = (history.samples + [sample])[-self.length:]
            kept[int(track_id)] = history
            histories.append(history)
        self._by_track = kept
        return histories


class DecisionMaker:
    def __init__(self, rules: DecisionRules, class_names: list[str], node_name: str = "decision") -> None:
        unknown = [c for c in rules.classes if c not in class_names]
        if unknown:
            raise ValueError(f"classes {unknown} are not classes of the detector")
        self.rules = rules
        self.class_names = class_names
        self.node_name = node_name
        self._relevant = np.array([class_names.index(c) for c in rules.classes])
        self._roi = np.array(rules.roi, np.float64)
        self._histories = TrackHistories(rules.ttc_frames)
        self._current: tuple[Action, Reason, Target | None, str] = (Action.PROCEED, Reason.CLEAR, None, "path clear")
        self._calm_frames = 0

    def decide(self, detections: Detections, at_ns: int) -> Decision:
        proposal = self._assess(detections)
        action, reason, target, detail = self._with_hysteresis(proposal)
        return Decision(
            frame_id=detections.frame_id, capture_ns=detections.capture_ns,
            stamps=detections.stamps + (Stamp("decision", at_ns),), action=action, reason=reason,
            decided_by=self.node_name, detail=detail, target=target,
        )

    def _assess(self, d: Detections) -> tuple[Action, Reason, Target | None, str]:
        keep = (d.scores >= self.rules.min_score) & np.isin(d.class_ids, self._relevant)
        boxes, scores, class_ids = d.boxes[keep], d.scores[keep], d.class_ids[keep]
        # The source's own timeline, not the capture clock: a replay then decides exactly as the drive did.
        histories = self._histories.update(d.track_ids[keep], boxes, d.media_ns)
        worst: tuple[int, float, float, Target, str] | None = None  # (action, -ttc, height, target, detail)
        for box, score, class_id, history in zip(boxes, scores, class_ids, histories):
            x1, y1, x2, y2 = (float(v) for v in box)
            if fraction_in_polygon(x1 / d.image_width, x2 / d.image_width, y2 / d.image_height, self._roi) < self.rules.min_in_path:
                continue
            height = (y2 - y1) / d.image_height
            ttc = history.ttc_s(self.rules.min_growth)
            action, why = self._urgency(height, ttc)
            name = self.class_names[int(class_id)]
            target = Target(class_id=int(class_id), score=float(score), box=(x1, y1, x2, y2), ttc_s=ttc)
            detail = f"{name} in path, {why}, height {height:.2f}, ttc {ttc:.1f} s"
            key = (int(action), -ttc, height, target, detail)
            if worst is None or key[:3] > worst[:3]:
                worst = key
        if worst is None:
            return (Action.PROCEED, Reason.CLEAR, None, "path clear")
        if worst[0] == Action.PROCEED:
            return (Action.PROCEED, Reason.CLEAR, worst[3], worst[4])
        action = Action(worst[0])
        reason = Reason.CLOSING_FAST if "closing" in worst[4] else Reason.OBJECT_IN_PATH
        return (action, reason, worst[3], worst[4])

    def _urgency(self, height: float, ttc: float) -> tuple[Action, str]:
        r = self.rules
        if ttc <= r.brake_ttc_s:
            return Action.BRAKE, "closing"
        if height >= r.brake_height:
            return Action.BRAKE, "close"
        if ttc <= r.slow_ttc_s:
            return Action.SLOW, "closing"
        if height >= r.slow_height:
            return Action.SLOW, "near"
        return Action.PROCEED, "far"

    def _with_hysteresis(self, proposal):
        current = self._current
        if proposal[0] >= current[0]:
            self._current, self._calm_frames = proposal, 0
            return proposal
        self._calm_frames += 1
        if self._calm_frames > self.rules.release_frames:
            self._current, self._calm_frames = proposal, 0
            return proposal
        held = f"holding {current[0].name} ({self._calm_frames}/{self.rules.release_frames} calmer frames): {current[3]}"
        return (current[0], current[1], current[2], held)
