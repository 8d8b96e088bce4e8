"""Adaptive depth over time: keyframes, one tracker and optical-flow propagation.

On video most frames are routine relative to the one before: the cheapest depth is no network at
all, the last frame's boxes moved forward by sparse optical flow (perception.tracking.flow). The
depth ladder, cheapest first: `propagate` (LEVEL_PROPAGATE), then the network's exits (exit 0 ..
full depth). Per frame, before any network runs, a gate picks the level from cheap signals:

1. Risk first. A relevant track in the ego path, entering it within `risk_horizon_s` at its
   velocity, closing (time to collision under the decision rules' `slow_ttc_s`) or already as tall
   as `slow_height`: the network runs, as deep as the deadline allows (full depth when it fits).
   The pipeline is deepest exactly when a brake may be needed. The ego path and thresholds are read
   from the decision node's config, so both nodes mean the same road.
2. Difficulty. The first frame, a new frame size or a scene cut (tracks reset, counted); more than
   `max_propagated` frames since the network ran; global frame change above `max_frame_change`
   (camera shake, a fast pan); a box whose flow failed or disagrees forward-backward; a track near
   the image border (entering or leaving); a young or low-confidence track: the network runs.
3. Otherwise: propagate.

A network frame picks its exit with the depth policy (`deadline` by default: full depth unless the
frame's deadline says otherwise) under the watchdog's ceiling; the detections feed the tracker
(ByteTrack-style: low-score boxes too), and the published ones carry track ids and velocities. A
propagated frame publishes the last frame's output moved by flow, with the same ids: a tracked box
as its Kalman estimate with the flow box as the measurement (or the prediction alone when its flow
failed), an untracked one as the flow moved it (or where it was, when its flow failed).

`mode: interval` replaces the gate by a fixed keyframe interval (the network every N frames), for
the Pareto comparison in docs/BENCHMARKS.md. Under any policy other than `adaptive` the network
runs on every frame with that policy and no flow is computed; the tracker still runs, so
detections carry track ids and velocities whatever the policy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from perception import REPO
from perception.config import Fraction, NonNegativeInt, Range
from perception.decision import fraction_in_polygon, load_decision_rules
from perception.detection.adaptive import AdaptiveDetector, FrameInference
from perception.detection.policy import PolicyConfig, run_policy
from perception.latency import now_ns
from perception.messages import LEVEL_PROPAGATE
from perception.tracking.flow import BoxFlow, FlowConfig, FlowFrame, FlowResult, frame_change
from perception.tracking.tracker import Track, Tracker, TrackerConfig, iou_matrix

DECISION_CONFIG = REPO / "configs" / "decision.yaml"


@dataclass(frozen=True)
class GateConfig:
    mode: Literal["adaptive", "interval"] = "adaptive"
    interval: Annotated[int, Range(1, 1000)] = 3  # interval mode: the network every `interval` frames, flow in between
    # adaptive: at most this many frames in a row without the network. Drift grows with every
    # propagated frame; on PETS09 frames 1-400 one frame costs ~1 AP50 point, two ~2 (docs/BENCHMARKS.md).
    max_propagated: Annotated[int, Range(0, 1000)] = 1
    scene_cut: Annotated[float, Range(0, 255)] = 40.0  # frame change (mean abs grey difference, 0..255) above which tracks reset
    max_frame_change: Annotated[float, Range(0, 255)] = 12.0  # above this (shake, fast pan) flow is not trusted: network
    max_fb_error_px: Annotated[float, Range(0, 1000, low_open=True)] = 2.0  # a box whose flow disagrees forward-backward by more: network
    border: Annotated[float, Range(0, 0.5, high_open=True)] = 0.02  # a track this close to an image edge (fraction of the side) ...
    entering_frames: NonNegativeInt = 5  # ... and younger than this (frames) is entering: network
    young_frames: NonNegativeInt = 2  # a track younger than this (frames) is not trusted to flow yet
    # Two tracks of one class overlapping more than this (IoU) are occluding: network. Off (1.0) by
    # default: on PETS09 1-400 it ran the network more without keeping more accuracy than the cap does.
    occlusion_iou: Annotated[float, Range(0, 1, low_open=True)] = 1.0
    min_track_score: Fraction = 0.0  # a track whose last detection scored lower is re-detected
    risk: bool = True  # risk first: tracks in or entering the ego path, or closing, force the network
    risk_horizon_s: Annotated[float, Range(0, 60)] = 1.0  # "entering": the box moved by its velocity over this horizon is in the path
    decision_config: Path = DECISION_CONFIG  # ego path, classes and thresholds (the decision node's rules)

    def __post_init__(self) -> None:
        if not self.max_frame_change <= self.scene_cut:
            raise ValueError("need max_frame_change <= scene_cut")


@dataclass(frozen=True)
class TemporalConfig:
    """The `temporal` section of the detector config: what runs between and around network frames."""

    gate: GateConfig = field(default_factory=GateConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)


@dataclass(frozen=True)
class RiskRules:
    """What makes a track dangerous, from the decision node's rules."""

    roi: np.ndarray
    class_ids: frozenset[int]
    min_in_path: float
    slow_ttc_s: float
    slow_height: float

    @classmethod
    def from_decision_config(cls, path: Path, class_names: list[str]) -> "RiskRules":
        rules = load_decision_rules(path)
        unknown = [c for c in rules.classes if c not in class_names]
        if unknown:
            raise ValueError(f"{path}: classes {unknown} are not classes of the detector")
        return cls(np.array(rules.roi, np.float64), frozenset(class_names.index(c) for c in rules.classes),
                   rules.min_in_path, rules.slow_ttc_s, rules.slow_height)

    def why(self, track: Track, width: int, height: int, horizon_s: float) -> str | None:
        """Why this track needs the full network now, or None."""
        if track.class_id not in self.class_ids:
            return None
        x1, y1, x2, y2 = (float(v) for v in track.box)
        if (y2 - y1) / height >= self.slow_height:
            return "near"
        if track.height_rate > 0 and 1.0 / track.height_rate < self.slow_ttc_s:
            return "closing"
        dx, dy = (float(v) * horizon_s for v in track.velocity)
        for shift_x, shift_y, what in ((0.0, 0.0, "in path"), (dx, dy, "entering path")):
            inside = fraction_in_polygon((x1 + shift_x) / width, (x2 + shift_x) / width, (y2 + shift_y) / height, self.roi)
            if inside >= self.min_in_path:
                return what
        return None


@dataclass
class Output:
    """What a frame published: boxes with their scores, classes, tracks and velocities."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray
    velocities: np.ndarray

    @classmethod
    def empty(cls) -> "Output":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint16),
                   np.zeros(0, np.uint32), np.zeros((0, 2), np.float32))

    def select(self, keep: np.ndarray) -> "Output":
        return Output(self.boxes[keep], self.scores[keep], self.class_ids[keep], self.track_ids[keep], self.velocities[keep])


@dataclass
class TemporalOutcome:
    level: int  # LEVEL_PROPAGATE or the exit that ran
    why: str  # the gate's reason, for logs and the level histogram's explanation
    output: Output  # at the detector's score threshold: what the node publishes
    inference: FrameInference | None  # the network's work on this frame (stage timings), None when propagated
    flow_ns: int  # time spent on optical flow (prepare and propagate) for this frame


def max_pairwise_iou(boxes: np.ndarray) -> float:
    """The largest IoU between two different boxes (0 for fewer than two)."""
    if len(boxes) < 2:
        return 0.0
    iou = iou_matrix(boxes, boxes)
    np.fill_diagonal(iou, 0.0)
    return float(iou.max())


class TemporalDetector:
    """The adaptive detector over a frame sequence: gate, network, tracker and flow, in one place."""

    def __init__(self, detector: AdaptiveDetector, policy: PolicyConfig, config: TemporalConfig) -> None:
        self.detector = detector
        self.every_frame = policy.kind != "adaptive"
        # Network frames of the adaptive policy go as deep as their deadline allows.
        self.policy = policy if self.every_frame else replace(policy, kind="deadline")
        self.config = config
        self.gate = config.gate
        self.tracker = Tracker(config.tracker)
        self.flow = BoxFlow(config.flow)
        self.risk = (RiskRules.from_decision_config(self.gate.decision_config, detector.manifest.class_names())
                     if self.gate.risk else None)
        self.levels: Counter = Counter()
        self.reasons: Counter = Counter()
        self.resets: Counter = Counter()
        self._previous: FlowFrame | None = None
        self._last = Output.empty()  # the last frame's boxes that later frames may propagate
        self._since_network = 0
        self._shape: tuple[int, ...] | None = None  # every-frame mode: the last frame's shape

    # -- one frame ------------------------------------------------------------------------
    def process(self, frame: np.ndarray, t_ns: int, deadline_ns: int | None = None,
                max_exit: int | None = None) -> TemporalOutcome:
        """Detections (scoring at least the detector's score threshold) for the next frame of the
        sequence, taken at `t_ns` (the source's timeline)."""
        if self.every_frame:
            outcome = self._every_frame(frame, t_ns, deadline_ns, max_exit)
        else:
            outcome = self._gated(frame, t_ns, deadline_ns, max_exit)
        self.levels[outcome.level] += 1
        return outcome

    def _gated(self, frame: np.ndarray, t_ns: int, deadline_ns: int | None, max_exit: int | None) -> TemporalOutcome:
        started = now_ns()
        current = self.flow.prepare(frame)
        why, moved = self._choose(current)
        flow_ns = now_ns() - started
        self._previous = current
        self.reasons[(why or "propagate").split(":")[0]] += 1
        if why is None:
            return self._propagated(moved, t_ns, frame.shape, flow_ns)
        return self._network(frame, why, t_ns, deadline_ns, max_exit, flow_ns)

    def _every_frame(self, frame: np.ndarray, t_ns: int, deadline_ns: int | None, max_exit: int | None) -> TemporalOutcome:
        if self._shape is not None and self._shape != frame.shape:
            self.reset("frame size")
        self._shape = frame.shape
        return self._network(frame, "every frame", t_ns, deadline_ns, max_exit, 0)

    def reset(self, reason: str) -> None:
        """Forget tracks and the previous frame (a new size, a scene cut, a new source)."""
        self.tracker.reset(reason)
        self.resets[reason] += 1
        self._previous = None
        self._last = Output.empty()

    # -- the gate -------------------------------------------------------------------------
    def _choose(self, current: FlowFrame) -> tuple[str | None, FlowResult | None]:
        """(why the network must run, or None to propagate; the flow result when computed)."""
        if self._previous is not None and self._previous.shape != current.shape:
            self.reset("frame size")
            return "new frame size", None
        if self._previous is None:
            return "first frame", None
        change = frame_change(self._previous, current)
        if change > self.gate.scene_cut:
            self.reset("scene cut")
            return f"scene cut: change {change:.0f}", None
        if self.gate.mode == "interval":
            due = self._since_network + 1 >= self.gate.interval
            return ("keyframe interval" if due else None), (None if due else self._move(current))
        if self._since_network >= self.gate.max_propagated:
            return f"cap: {self._since_network} frames propagated", None
        if change > self.gate.max_frame_change:
            return f"frame change: {change:.1f}", None
        height, width = current.shape
        tracks = [t for t in self.tracker.tracks if t.frames_since_update == 0]  # not the lost ones
        for track in tracks:
            risky = self.risk.why(track, width, height, self.gate.risk_horizon_s) if self.risk else None
            if risky:
                return f"risk: track {track.track_id} {risky}", None
        for track in tracks:
            difficulty = self._difficulty(track, width, height)
            if difficulty:
                return f"{difficulty}: track {track.track_id}", None
        overlap = self._occlusion(tracks) if self.gate.occlusion_iou < 1.0 else 0.0  # 1.0: the rule is off
        if overlap > self.gate.occlusion_iou:
            return f"occlusion: IoU {overlap:.2f}", None
        moved = self._move(current)
        # Only tracked boxes count: a low-score box nobody tracks may fail to flow without harm.
        tracked = self._last.track_ids > 0
        failed = int((~moved.ok & tracked).sum())
        if failed:
            return f"flow failed: {failed} tracked boxes", None
        worst = float(moved.fb_error[tracked].max()) if tracked.any() else 0.0
        if worst > self.gate.max_fb_error_px:
            return f"flow inconsistent: {worst:.1f} px", None
        return None, moved

    def _difficulty(self, track: Track, width: int, height: int) -> str | None:
        if track.age_frames < self.gate.young_frames:
            return "young"
        if track.score < self.gate.min_track_score:
            return "low confidence"
        x1, y1, x2, y2 = (float(v) for v in track.box)
        margin_x, margin_y = self.gate.border * width, self.gate.border * height
        at_border = x1 < margin_x or y1 < margin_y or x2 > width - margin_x or y2 > height - margin_y
        if at_border and track.age_frames < self.gate.entering_frames:
            return "entering"
        return None

    @staticmethod
    def _occlusion(tracks: list[Track]) -> float:
        """The largest overlap of two tracks of one class (a car also seen as a truck is no occlusion)."""
        return max((max_pairwise_iou(np.array([t.box for t in tracks if t.class_id == c], np.float32).reshape(-1, 4))
                    for c in {t.class_id for t in tracks}), default=0.0)

    def _move(self, current: FlowFrame) -> FlowResult:
        return self.flow.propagate(self._previous, current, self._last.boxes)

    # -- the two kinds of frame -----------------------------------------------------------
    def _network(self, frame: np.ndarray, why: str, t_ns: int, deadline_ns: int | None, max_exit: int | None,
                 flow_ns: int) -> TemporalOutcome:
        threshold = self.detector.score_threshold
        inference = self.detector.begin(frame)
        # Decoded once, low enough for the tracker's second association (ByteTrack keeps low-score boxes).
        low = min(threshold, self.config.tracker.low_score)
        outcome = run_policy(self.detector, inference, self.policy, deadline_ns, max_exit, score_threshold=low)
        boxes, scores, class_ids = outcome.boxes, outcome.scores, outcome.class_ids
        update = self.tracker.update(boxes, scores, class_ids, t_ns, (frame.shape[1], frame.shape[0]))
        velocities = self._velocities(update.detection_track_ids)
        output = Output(boxes.astype(np.float32), scores.astype(np.float32), class_ids.astype(np.uint16),
                        update.detection_track_ids.astype(np.uint32), velocities)
        # What later frames propagate: the boxes the tracker would consider (an evaluation asks for
        # far lower scores, and flowing hundreds of boxes nobody keeps costs more than the network saves).
        self._last = output.select((output.scores >= self.config.tracker.low_score) | (output.track_ids > 0))
        self._since_network = 0
        return TemporalOutcome(outcome.exit_index, why, output.select(output.scores >= threshold), inference, flow_ns)

    def _propagated(self, moved: FlowResult, t_ns: int, shape: tuple[int, ...], flow_ns: int) -> TemporalOutcome:
        last = self._last
        boxes = moved.boxes.astype(np.float32)
        measured = {int(tid): box for tid, box, ok in zip(last.track_ids, boxes, moved.ok) if tid and ok}
        self.tracker.propagate(measured, t_ns, (shape[1], shape[0]))
        # A tracked box is published as the filter's estimate, flow and motion model together: on
        # PETS09 1-400 this kept 0.2 AP50 and 0.3 AP50:95 points more than the raw flow box.
        estimates = self.tracker.predict_boxes(t_ns)
        for index, track_id in enumerate(last.track_ids):
            if track_id and int(track_id) in estimates:
                boxes[index] = estimates[int(track_id)]
        self._last = Output(boxes, last.scores, last.class_ids, last.track_ids, self._velocities(last.track_ids))
        self._since_network += 1
        output = self._last.select(self._last.scores >= self.detector.score_threshold)
        return TemporalOutcome(LEVEL_PROPAGATE, "propagate", output, None, flow_ns)

    def _velocities(self, track_ids: np.ndarray) -> np.ndarray:
        by_id = {t.track_id: t.velocity for t in self.tracker.tracks}
        return np.array([by_id.get(int(tid), (0.0, 0.0)) for tid in track_ids], np.float32).reshape(-1, 2)
