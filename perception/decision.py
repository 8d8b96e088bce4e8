"""Turning detections into PROCEED / SLOW / BRAKE, with a machine-readable reason.

An object matters when its class is one the vehicle must not hit, its score is high enough and
its ground contact (the bottom edge of its box) lies in the ego path, a polygon in normalised
image coordinates. Two proxies say how urgent it is, since a monocular detector has no range:
- size: box height as a fraction of image height (near objects are tall); a box cut off by the
  frame's bottom edge is as near as anything gets, whatever its height (the detector clips boxes
  to the frame, so a car close ahead ends exactly on the bottom row);
- time to collision: TTC = 1 / (d ln h / dt), the time until the box would fill the view at its
  current rate of growth, fitted over the recent heights of the object's track. Tracks come with
  the detections (the detector's tracker, perception/tracking): this node keeps only each track's
  recent heights, never matches boxes itself. An untracked detection (track id 0) has no history.
  Heights are compared within one network pass (input size and exit) only: the same object's box
  is taller or shorter at another, and a detector that changes pass under load must not make a
  car seem to close or to stop closing.
Escalation is immediate; de-escalation waits `release_frames` consecutive calmer frames, so the
decision does not flicker between frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Hashable

import numpy as np

from perception.config import ConfigError, Fraction, Length, Range, ScoreThreshold, check_ranges
from perception.detection.classes import shown_classes

from perception.messages import LEVEL_PROPAGATE, Action, Decision, Detections, NetworkPass, Reason, Stamp, Target

DEFAULT_ROI = [(0.46, 0.58), (0.54, 0.58), (0.80, 1.0), (0.20, 1.0)]  # the ego lane of a forward camera
HeightShare = Annotated[float, Range(0, 1, low_open=True)]  # a box's height over the image's: above 1 none is
Seconds = Annotated[float, Range(0, 3600, low_open=True)]
MIN_ROI_AREA = 1e-4  # of the image: an ego path smaller than 1% x 1% of the view cannot hold a box's contact
EDGE_EPS = 1e-6  # normalised coordinates this close to the path's boundary are on it (float32 boxes: ~1e-7)
DEFAULT_CLASSES = ["person", "bicycle", "car", "motorbike", "bus", "truck", "dog", "horse", "cow"]


@dataclass(frozen=True)
class DecisionRules:
    roi: Annotated[list[tuple[Fraction, Fraction]], Length(3, 64)] = field(default_factory=lambda: list(DEFAULT_ROI))
    classes: Annotated[list[str], Length(1)] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    min_score: ScoreThreshold = 0.4
    min_in_path: Annotated[float, Range(0, 1, low_open=True)] = 0.3  # fraction of the box's bottom edge inside the ego path
    slow_height: HeightShare = 0.15  # box height / image height
    brake_height: HeightShare = 0.35
    slow_ttc_s: Seconds = 4.0
    brake_ttc_s: Seconds = 2.0
    release_frames: Annotated[int, Range(0, 1000)] = 5
    ttc_frames: Annotated[int, Range(2, 1000)] = 8  # samples in the growth-rate fit
    min_growth: Annotated[float, Range(0, 10)] = 0.05  # box growth over the fit below which TTC is not trusted (pixel jitter)
    # A box whose bottom lies within this fraction of the image height of the frame's bottom edge is
    # cut off by it: the object's ground contact is below the view, as close as anything gets.
    edge_margin: Annotated[float, Range(0, 0.5)] = 0.02

    def __post_init__(self) -> None:
        check_ranges(self)  # also when built in code: these rules decide whether to brake
        if not all(0 <= x <= 1 and 0 <= y <= 1 for x, y in self.roi):
            raise ValueError("roi must be a polygon in normalised [0, 1] coordinates")
        if polygon_area(np.array(self.roi, np.float64)) < MIN_ROI_AREA:
            raise ValueError(f"roi encloses no area (its points are in a line or repeated): {self.roi}")
        if not self.slow_height <= self.brake_height:
            raise ValueError("need slow_height <= brake_height")
        if not self.brake_ttc_s <= self.slow_ttc_s:
            raise ValueError("need brake_ttc_s <= slow_ttc_s")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes lists a class twice: {self.classes}")


def load_rules(path: Path) -> tuple[DecisionRules, Path | None]:
    """The rules and class-names file (None: the detector's own names) of a decision node's config
    file (its other keys are the node's)."""
    from perception.config import from_mapping, load_yaml

    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    rules = from_mapping(DecisionRules, data.get("rules") or {}, source=f"{path}: rules", base_dir=Path(path).parent)
    classes = data.get("classes_file")
    return rules, (Path(path).parent / classes).resolve() if classes else None


def decision_maker(rules: DecisionRules, class_names: list[str], name: str = "decision") -> "DecisionMaker":
    """The rules over a detector's class names; ConfigError, one line, when a rule names a class the
    detector does not have."""
    try:
        return DecisionMaker(rules, class_names, name)
    except ValueError as exc:
        raise ConfigError(f"rules.classes: {exc} (its classes: {shown_classes(class_names)})") from None


def polygon_area(polygon: np.ndarray) -> float:
    """Area enclosed by a polygon (shoelace formula, absolute)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def fraction_in_polygon(x1: float, x2: float, y: float, polygon: np.ndarray, samples: int = 9) -> float:
    """Fraction of the horizontal segment (x1..x2, y) inside the polygon, its boundary included."""
    return float(fractions_in_polygon(np.array([x1]), np.array([x2]), np.array([y]), polygon, samples)[0])


def fractions_in_polygon(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, polygon: np.ndarray,
                         samples: int = 9) -> np.ndarray:
    """For each i, the fraction of the horizontal segment (x1[i]..x2[i], y[i]) inside the polygon, its
    boundary included: every box of a frame in one pass over the polygon's edges (a loop per box cost
    the detector's risk rule a millisecond a frame on a busy view).

    Closed, not strict: a box clipped to the frame ends exactly on the bottom row, which is the ego
    path's own bottom edge, and must count as in it (a strict even-odd test finds no crossing there).
    """
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (both ends of the segment), got {samples}")
    x1, x2, y = (np.asarray(v, np.float64).reshape(-1) for v in (x1, x2, y))
    xs = x1[:, None] + np.arange(samples) * ((x2 - x1) / (samples - 1))[:, None]  # (N, samples), as np.linspace
    xs[:, -1] = x2
    inside = np.zeros(xs.shape, bool)
    on_edge = np.zeros(xs.shape, bool)
    px, py = polygon[:, 0].tolist(), polygon[:, 1].tolist()
    for ax, ay, bx, by in zip(px, py, px[1:] + px[:1], py[1:] + py[:1]):
        if abs(ay - by) <= EDGE_EPS:  # a horizontal edge: on it when y is its row
            on_row = np.abs(ay - y) <= EDGE_EPS
            on_edge |= on_row[:, None] & (xs >= min(ax, bx) - EDGE_EPS) & (xs <= max(ax, bx) + EDGE_EPS)
            continue
        spanned = (min(ay, by) - EDGE_EPS <= y) & (y <= max(ay, by) + EDGE_EPS)
        cross_x = (ax + (y - ay) * (bx - ax) / (by - ay))[:, None]
        on_edge |= spanned[:, None] & (np.abs(xs - cross_x) <= EDGE_EPS)
        crossing = spanned & ((ay > y) != (by > y))
        inside ^= crossing[:, None] & (xs < cross_x)
    return (inside | on_edge).mean(axis=1)


def shares_in_path(boxes: np.ndarray, image_width: int, image_height: int, roi: np.ndarray) -> np.ndarray:
    """Fraction of each box's ground contact (its bottom edge) inside the ego path `roi`. A box reaching
    below the path's lowest row (a path drawn short of the frame's bottom) stands nearer than the
    path's end: it is judged on that row, and so is one wholly below it."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    contact = np.minimum(boxes[:, 3] / image_height, float(roi[:, 1].max()))
    return fractions_in_polygon(boxes[:, 0] / image_width, boxes[:, 2] / image_width, contact, roi)


@dataclass
class _History:
    """Recent (media_ns, box height, network pass) samples of one track, for its growth rate."""

    samples: list[tuple[int, float, Hashable]]

    def ttc_s(self, min_growth: float) -> float:
        """Time to collision from the growth rate of the box height; inf unless it grew by at
        least `min_growth` over the samples (a pixel of jitter on a small box is not closing).

        Growth is measured within each network pass's samples only: a pass of another input size
        or exit draws the same box taller or shorter, and that step is not motion. With one pass this
        is the plain fit over every sample; a pass seen once adds nothing until it is seen again."""
        if len(self.samples) < 2:
            return math.inf
        t0 = self.samples[0][0]
        by_pass: dict[Hashable, list[tuple[float, float]]] = {}  # (s since the first sample, ln height)
        for t_ns, height, measured_by in self.samples:
            by_pass.setdefault(measured_by, []).append(((t_ns - t0) / 1e9, math.log(max(height, 1e-3))))
        runs = [run for run in by_pass.values() if run[-1][0] > run[0][0]]
        if not runs:
            return math.inf
        # The growth over the samples' span, from the passes' own first and last heights.
        span_s = (self.samples[-1][0] - t0) / 1e9
        within_s = math.fsum(run[-1][0] - run[0][0] for run in runs)
        log_growth = math.fsum(run[-1][1] - run[0][1] for run in runs)
        if log_growth * span_s / within_s < math.log1p(min_growth):
            return math.inf
        rate = within_slope([[t for t, _ in run] for run in runs], [[y for _, y in run] for run in runs])  # d ln h / dt
        return 1.0 / rate if rate > 1e-6 else math.inf


def within_slope(xs: list[list[float]], ys: list[list[float]]) -> float:
    """The least-squares slope shared by groups of (x, y) that each have their own offset (each group
    centred on its own means), in correctly rounded sums (math.fsum): no build-dependent summation,
    where np.polyfit's LAPACK call differed in the last digits between numpy builds (per-node replay
    allows 1e-6 s on a time to collision for what is left, such as the platform's log in the last
    place). One group: the plain least-squares slope."""
    products, spreads = [], []
    for x, y in zip(xs, ys):
        mean_x, mean_y = math.fsum(x) / len(x), math.fsum(y) / len(y)
        spreads += [(a - mean_x) ** 2 for a in x]
        products += [(a - mean_x) * (b - mean_y) for a, b in zip(x, y)]
    spread = math.fsum(spreads)
    return math.fsum(products) / spread if spread > 0 else 0.0


class TrackHistories:
    """The last `length` heights of every track seen in the last frame; tracks that vanish are forgotten."""

    # A propagated frame's tracked boxes take their size from the tracker's filter, which learns on
    # network frames: after a change of pass it moves from the old pass's size to the new one's over
    # the next network frames, a growth within the new pass that is not motion. Its samples join
    # their pass once this many network frames in a row have run it.
    SETTLED_AFTER = 2

    def __init__(self, length: int) -> None:
        self.length = length
        self._by_track: dict[int, _History] = {}
        self._network_passes: list[Hashable] = []  # the last SETTLED_AFTER network frames' passes

    def update(self, track_ids: np.ndarray, boxes: np.ndarray, t_ns: int, measured_by: Hashable = None,
               propagated: bool = False) -> list[_History]:
        """`measured_by`: the network pass these boxes come from (perception.messages.NetworkPass);
        None when not known, which is one pass like any other. `propagated`: the frame ran no network
        (its boxes were carried from the last network frame's); while the filter is still settling
        after a change of pass, its samples join no pass and the fit leaves them out."""
        if not propagated:
            self._network_passes = (self._network_passes + [measured_by])[-self.SETTLED_AFTER:]
        settled = not propagated or all(seen == measured_by for seen in self._network_passes)
        kept: dict[int, _History] = {}
        histories = []
        for track_id, box in zip(track_ids, boxes):
            # In float64: the height of a hostile float32 box (y1 -3e38, y2 3e38) overflows float32.
            sample = (t_ns, float(box[3]) - float(box[1]), measured_by if settled else object())
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
        # Relevant by class id, one slot more for ids the detector does not have (never relevant).
        self._relevant = np.array([name in rules.classes for name in class_names] + [False])
        self._roi = np.array(rules.roi, np.float64)
        self._histories = TrackHistories(rules.ttc_frames)
        self._current: tuple[Action, Reason, Target | None, str] = (Action.PROCEED, Reason.CLEAR, None, "path clear")
        self._calm_frames = 0

    def decide(self, detections: Detections, at_ns: int) -> Decision:
        d = detections
        proposal = self.assess(d.boxes, d.scores, d.class_ids, d.track_ids, d.image_width, d.image_height, d.media_ns,
                               d.measured_by, propagated=d.exit_index == LEVEL_PROPAGATE)
        action, reason, target, detail = self._with_hysteresis(proposal)
        return Decision(
            frame_id=detections.frame_id, capture_ns=detections.capture_ns,
            stamps=detections.stamps + (Stamp("decision", at_ns),), action=action, reason=reason,
            decided_by=self.node_name, detail=detail, target=target,
        )

    def assess(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, track_ids: np.ndarray,
               image_width: int, image_height: int, t_ns: int,
               measured_by: NetworkPass | None = None, propagated: bool = False) -> tuple[Action, Reason, Target | None, str]:
        """One frame's verdict before hysteresis: the most urgent relevant object in the path (its
        target; None when nothing relevant is in it). Feeds the tracks' height histories; `t_ns` is
        the source's timeline, not the capture clock, so a replay decides exactly as the drive did;
        `measured_by` the network pass the boxes come from (growth is fitted within a pass), and
        `propagated` whether they were carried from an earlier network frame (TrackHistories)."""
        unknown = len(self._relevant) - 1
        known = np.where((class_ids >= 0) & (class_ids < unknown), class_ids, unknown)
        keep = (scores >= self.rules.min_score) & self._relevant[known]
        boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        histories = self._histories.update(track_ids[keep], boxes, t_ns, measured_by, propagated)
        worst: tuple[tuple[int, float, float], int, str] | None = None  # ((action, -ttc, height), box index, why)
        in_path = shares_in_path(boxes, image_width, image_height, self._roi) >= self.rules.min_in_path
        for index in np.flatnonzero(in_path):
            top, bottom = float(boxes[index, 1]) / image_height, float(boxes[index, 3]) / image_height
            height = bottom - top
            ttc = histories[index].ttc_s(self.rules.min_growth)
            action, why = self._urgency(height, ttc, cut_off=bottom >= 1.0 - self.rules.edge_margin)
            key = (int(action), -ttc, height)
            if worst is None or key > worst[0]:  # the first of equals stays
                worst = (key, int(index), why)
        if worst is None:
            return (Action.PROCEED, Reason.CLEAR, None, "path clear")
        (action_value, minus_ttc, height), index, why = worst  # described once, for the box that decides
        x1, y1, x2, y2 = (float(v) for v in boxes[index])
        class_id = int(class_ids[index])
        target = Target(class_id=class_id, score=float(scores[index]), box=(x1, y1, x2, y2), ttc_s=-minus_ttc)
        detail = f"{self.class_names[class_id]} in path, {why}, height {height:.2f}, ttc {-minus_ttc:.1f} s"
        if action_value == Action.PROCEED:
            return (Action.PROCEED, Reason.CLEAR, target, detail)
        return (Action(action_value), Reason.CLOSING_FAST if why == "closing" else Reason.OBJECT_IN_PATH, target, detail)

    def _urgency(self, height: float, ttc: float, cut_off: bool) -> tuple[Action, str]:
        r = self.rules
        if ttc <= r.brake_ttc_s:
            return Action.BRAKE, "closing"
        if cut_off:
            return Action.BRAKE, "cut off by the frame's bottom edge"
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
