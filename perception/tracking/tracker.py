"""A ByteTrack-style multi-object tracker on a timestamped, variable-rate frame stream.

Where it follows ByteTrack (github.com/ifzhang/ByteTrack, yolox/tracker/byte_tracker.py,
kalman_filter.py, matching.py):
- detections are split by score: high (>= `high_score`, ByteTrack's track_thresh) and low
  (`low_score` <= score < `high_score`);
- first association: confirmed tracks, tracked and lost alike, against high detections, on
  1 - IoU * score (`fuse_score`), accepted when IoU * score >= `match_iou_high` (their
  match_thresh 0.8 is a cost, i.e. 0.2 here);
- second association: tracks still unmatched that were tracked (not lost) against low detections
  on plain IoU >= `match_iou_low`; tracked tracks left over become lost;
- unconfirmed tracks (born last frame) against the high detections left, fused IoU >=
  `unconfirmed_iou`; an unconfirmed track that misses a frame is removed;
- new tracks from leftover high detections scoring >= `new_track_score` (their det_thresh =
  track_thresh + 0.1); tracks born on the first frame of a sequence are confirmed at once;
- lost tracks predict with zero height velocity; a lost track overlapping a tracked one by IoU >=
  `duplicate_iou` (0.85: their 0.15 distance) is a duplicate and the younger of the two goes;
- the Kalman filter: state (x, y, a, h, vx, vy, va, vh), constant velocity, and their noise model
  (std weights 1/20 position, 1/160 velocity, scaled by box height; 1e-2 / 1e-5 / 1e-1 for aspect).
- optimal assignment with the cost limit semantics of their `lap.lapjv(cost_limit=...)`
  (a pair above the limit is never worth taking), here with scipy's linear_sum_assignment.

Where it differs:
- time is real: the transition uses the interval dt between frames' timestamps (t_ns), process
  noise variance grows linearly with dt (ByteTrack's per-frame noise holds at `noise_rate_hz`),
  velocities are per second, and a lost track ends after `max_lost_s` seconds, not a frame count;
- detections only match tracks of their own class (`per_class`); ByteTrack is single-class;
- public ids are handed out at confirmation, so tentative tracks that die use up no ids
  (ByteTrack numbers every tentative track); ids are never reused, not even after reset();
- `min_hits` generalises ByteTrack's "confirmed on the second hit" (min_hits = 2 is ByteTrack);
- a track whose box is mostly outside the image (less than `min_visible` of its area inside) and
  that no detection matched this frame is ended (ByteTrack keeps it until its buffer runs out);
- the tracker learns from network frames only: a frame without the network (its boxes moved by
  optical flow, perception.detection.frames) leaves it alone, and asks it for predictions
  (predict_boxes) only for tracks whose flow failed;
- a snapshot's box is this frame's measurement when there is one (ByteTrack reports the filtered
  state), otherwise the Kalman prediction;
- boxes that are NaN, infinite or of zero size are dropped (counted), never a crash.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Annotated, get_type_hints

import numpy as np

from perception.config import Fraction, Range, check_ranges
from perception.tracking.association import assign, iou_matrix
from perception.tracking.kalman import BoxKalman, xyah_to_xyxy, xyxy_to_xyah

UnitIoU = Annotated[float, Range(0, 1, low_open=True)]  # an overlap threshold: 0 would match anything

_NS_PER_S = 1e9


@dataclass(frozen=True)
class TrackerConfig:
    high_score: Fraction = 0.5  # ByteTrack's track_thresh: detections at or above it are "high"
    low_score: Fraction = 0.1  # below it a detection is ignored; between the two it can only extend a track
    new_track_score: Fraction = 0.6  # a leftover high detection starts a track only from this score
    match_iou_high: UnitIoU = 0.2  # first association (high detections): minimum IoU (times score if fuse_score)
    match_iou_low: UnitIoU = 0.5  # second association (low detections to still unmatched tracked tracks): minimum IoU
    unconfirmed_iou: UnitIoU = 0.3  # tentative tracks to leftover high detections: minimum IoU (times score if fuse_score)
    fuse_score: bool = True  # ByteTrack's fuse_score: weight IoU by the detection's score in the high associations
    per_class: bool = True  # a detection matches only a track of its own class
    min_hits: Annotated[int, Range(1, 1000)] = 2  # detections before a track is confirmed (a track born on a sequence's first frame: at once)
    max_lost_s: Annotated[float, Range(0, 3600, low_open=True)] = 1.0  # a track without a detection for longer than this is ended
    duplicate_iou: UnitIoU = 0.85  # a lost and a tracked track overlapping this much are one object: the younger goes
    min_visible: UnitIoU = 0.5  # an unmatched track with less of its box inside the image has left it
    std_weight_position: Annotated[float, Range(0, 10, low_open=True)] = 1.0 / 20  # ByteTrack's noise weights, times box height
    std_weight_velocity: Annotated[float, Range(0, 10, low_open=True)] = 1.0 / 160
    noise_rate_hz: Annotated[float, Range(0, 1000, low_open=True)] = 30.0  # frame rate at which the weights above are per-frame noise (ByteTrack: MOT17, 30 Hz)

    def __post_init__(self) -> None:
        hints = get_type_hints(TrackerConfig)
        for f in fields(self):
            value = getattr(self, f.name)
            kind = hints[f.name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))  # YAML writes 1 for 1.0
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"tracker.{f.name} must be {kind.__name__}, got {value!r}")
            if kind is float and not math.isfinite(value):
                raise ValueError(f"tracker.{f.name} must be finite, got {value!r}")
        check_ranges(self)
        if not self.low_score <= self.high_score <= self.new_track_score:
            raise ValueError("tracker: need low_score <= high_score <= new_track_score, got "
                             f"{self.low_score}, {self.high_score}, {self.new_track_score}")


@dataclass
class Track:
    """A snapshot handed out by the tracker (a copy: changing it changes nothing in the tracker)."""

    track_id: int  # >= 1, never reused within a Tracker's life (reset() does not reuse ids either)
    box: np.ndarray  # xyxy float32 pixels: this frame's detection if it was matched, else the prediction
    score: float  # score of the last detection matched to it
    class_id: int
    age_frames: int  # frames the tracker saw (network frames) since its birth: 0 on the frame it was born
    hits: int  # detections matched so far, the one it was born from included
    frames_since_update: int  # network frames (update calls) since it was last matched: 0 when matched this frame
    velocity: np.ndarray  # (vx, vy) float64 of the box centre, px/s, from the Kalman state
    height_rate: float  # d ln(h) / dt in 1/s from the Kalman state (> 0: growing, i.e. approaching)
    confirmed: bool


@dataclass(frozen=True)
class Update:
    """What update() returns."""

    tracks: list[Track]  # confirmed tracks matched to a detection this frame, in the order of those detections
    detection_track_ids: np.ndarray  # uint32, one per input detection: its confirmed track's id, 0 if none


class _State(enum.Enum):
    TRACKED = 1
    LOST = 2


class _Track:
    """A live track (internal; the world sees Track snapshots)."""

    def __init__(self, box: np.ndarray, score: float, class_id: int, t_ns: int, config: TrackerConfig) -> None:
        self.kalman = BoxKalman(xyxy_to_xyah(box), config)
        self.track_id = 0  # public id, given at confirmation
        self.score = score
        self.class_id = class_id
        self.t_ns = t_ns  # time of the Kalman state
        self.born_ns = t_ns
        self.last_detection_ns = t_ns
        self.age_frames = 0
        self.hits = 1
        self.frames_since_update = 0
        self.state = _State.TRACKED
        self.confirmed = False
        self.measured_box: np.ndarray | None = box.astype(np.float32)
        self.measured_ns = t_ns

    def predict(self, t_ns: int) -> None:
        dt_s = max(0, t_ns - self.t_ns) / _NS_PER_S
        self.kalman.predict(dt_s, freeze_height=self.state is _State.LOST)
        self.t_ns = t_ns
        self.age_frames += 1

    def match(self, box: np.ndarray, score: float) -> None:
        self.kalman.correct(xyxy_to_xyah(box))
        self.score = score
        self.hits += 1
        self.frames_since_update = 0
        self.state = _State.TRACKED
        self.last_detection_ns = self.t_ns
        self.measured_box, self.measured_ns = box.astype(np.float32), self.t_ns

    def predicted_box(self) -> np.ndarray:
        return xyah_to_xyxy(self.kalman.mean)

    def box(self) -> np.ndarray:
        """This frame's measurement if there is one, else the Kalman prediction."""
        if self.measured_box is not None and self.measured_ns == self.t_ns:
            return self.measured_box.copy()
        return self.predicted_box()

    def snapshot(self) -> Track:
        mean = self.kalman.mean
        return Track(track_id=self.track_id, box=self.box(), score=self.score, class_id=self.class_id,
                     age_frames=self.age_frames, hits=self.hits, frames_since_update=self.frames_since_update,
                     velocity=mean[4:6].copy(), height_rate=float(mean[7] / mean[3]) if mean[3] > 0 else 0.0,
                     confirmed=self.confirmed)


@dataclass
class _Detections:
    """This frame's usable detections, with their index in the caller's arrays."""

    index: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    count: int  # detections the caller gave, usable or not

    def subset(self, keep: np.ndarray) -> _Detections:
        return _Detections(self.index[keep], self.boxes[keep], self.scores[keep], self.class_ids[keep], self.count)


class Tracker:
    """ByteTrack-style tracker; see the module docstring. Not thread-safe.

    `image_size` is (width, height) in pixels. A frame of a new size means a new camera or a new
    stream: the caller should reset() (with its own reason); if it does not, the tracker resets
    itself with reason "image_size". Timestamps must not go backwards; if they do, the tracker
    resets itself with reason "time_backwards". Counters: `resets` (per reason) and `dropped`
    ("invalid_box": NaN, infinite or empty detections).
    """

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.resets: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._frames = 0  # frames since construction or reset: the first one confirms its tracks at once
        self._image_size: tuple[int, int] | None = None
        self._t_ns: int | None = None

    # ---- public API ----

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, t_ns: int,
               image_size: tuple[int, int]) -> Update:
        """A frame with the network's detections (any score: below low_score they are ignored).

        Returns the confirmed tracks matched this frame, in the order of their detections in the
        input, and for every input detection the id of the confirmed track it was matched to (or
        that it confirmed or started), 0 if none (unmatched, tentative, dropped or low-score)."""
        detections = self._validate(boxes, scores, class_ids)
        self._begin_frame(t_ns, image_size)
        first_frame = self._frames == 0
        for track in self._tracks:
            track.predict(t_ns)
        matched = self._associate(detections, first_frame)
        self._end_tracks(t_ns, {id(track) for track in matched.values()})
        self._frames += 1
        ids = np.zeros(detections.count, np.uint32)
        out = []
        for det_index in sorted(matched):
            track = matched[det_index]
            if track.confirmed and track in self._tracks:
                ids[det_index] = track.track_id
                out.append(track.snapshot())
        return Update(out, ids)

    def predict_boxes(self, t_ns: int) -> dict[int, np.ndarray]:
        """Kalman-predicted xyxy boxes (float32) of the active confirmed tracks at t_ns, changing nothing.
        A t_ns before the last frame gives the boxes at the last frame."""
        out = {}
        for track in self._tracks:
            if track.confirmed:
                dt_s = max(0, t_ns - track.t_ns) / _NS_PER_S
                out[track.track_id] = xyah_to_xyxy(track.kalman.predicted_mean(dt_s, track.state is _State.LOST))
        return out

    @property
    def tracks(self) -> list[Track]:
        """Snapshots of the active confirmed tracks (tracked and lost, see frames_since_update), by id."""
        return sorted((t.snapshot() for t in self._tracks if t.confirmed), key=lambda t: t.track_id)

    def reset(self, reason: str) -> None:
        """Forget every track (a scene cut, a new frame size); ids are not reused afterwards."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reset reason must be a non-empty string, got {reason!r}")
        self.resets[reason] += 1
        self._tracks = []
        self._frames = 0
        self._image_size = None
        self._t_ns = None

    # ---- one frame ----

    def _validate(self, boxes, scores, class_ids) -> _Detections:
        boxes = np.asarray(boxes, np.float64)
        scores = np.asarray(scores, np.float64).reshape(-1)
        class_ids = np.asarray(class_ids).reshape(-1)
        if boxes.size == 0 and len(scores) == 0 and len(class_ids) == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) == len(scores) == len(class_ids):
            raise ValueError(f"tracker update: need boxes (N, 4), scores (N,), class_ids (N,), got "
                             f"{boxes.shape}, {scores.shape}, {class_ids.shape}")
        valid = _valid_boxes(boxes) & np.isfinite(scores)
        self.dropped["invalid_box"] += int((~valid).sum())
        keep = valid & (scores >= self.config.low_score)
        return _Detections(np.flatnonzero(keep), boxes[keep], scores[keep], class_ids[keep].astype(np.int64), len(boxes))

    def _begin_frame(self, t_ns: int, image_size: tuple[int, int]) -> None:
        size = tuple(int(v) for v in image_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"tracker: image_size must be (width, height) > 0, got {image_size!r}")
        if self._image_size is not None and size != self._image_size:
            self.reset("image_size")
        if self._t_ns is not None and t_ns < self._t_ns:
            self.reset("time_backwards")
        self._image_size, self._t_ns = size, int(t_ns)

    def _associate(self, detections: _Detections, first_frame: bool) -> dict[int, _Track]:
        """ByteTrack's association steps; returns {input detection index: the track it fed or started}."""
        cfg = self.config
        matched: dict[int, _Track] = {}
        high = detections.subset(detections.scores >= cfg.high_score)
        low = detections.subset(detections.scores < cfg.high_score)
        pool = [t for t in self._tracks if t.confirmed]
        tentative = [t for t in self._tracks if not t.confirmed]

        # 1. confirmed tracks (tracked and lost) with high detections
        pairs = assign(self._similarity(pool, high, cfg.fuse_score), cfg.match_iou_high)
        self._apply(pairs, pool, high, matched)
        left_tracks = _unmatched(pool, pairs, 0)
        left_high = high.subset(_unmatched_mask(len(high.index), pairs))

        # 2. tracks that were being tracked with low detections (ByteTrack leaves lost tracks out here)
        tracked = [t for t in left_tracks if t.state is _State.TRACKED]
        pairs = assign(self._similarity(tracked, low, False), cfg.match_iou_low)
        self._apply(pairs, tracked, low, matched)
        for track in _unmatched(tracked, pairs, 0):
            track.state = _State.LOST
        for track in left_tracks:
            if track.state is _State.LOST and track not in matched.values():
                track.frames_since_update += 1

        # 3. tentative tracks with the high detections left; those unmatched are dropped
        pairs = assign(self._similarity(tentative, left_high, cfg.fuse_score), cfg.unconfirmed_iou)
        self._apply(pairs, tentative, left_high, matched)
        for track in _unmatched(tentative, pairs, 0):
            self._tracks.remove(track)
        fresh = left_high.subset(_unmatched_mask(len(left_high.index), pairs))

        # 4. new tracks
        for i in np.flatnonzero(fresh.scores >= cfg.new_track_score):
            track = _Track(fresh.boxes[i], float(fresh.scores[i]), int(fresh.class_ids[i]), self._t_ns, cfg)
            self._tracks.append(track)
            if first_frame:
                self._confirm(track)
            matched[int(fresh.index[i])] = track
        for track in matched.values():
            if not track.confirmed and track.hits >= cfg.min_hits:
                self._confirm(track)
        return matched

    def _similarity(self, tracks: list[_Track], detections: _Detections, fuse_score: bool) -> np.ndarray:
        if not tracks or not len(detections.index):
            return np.zeros((len(tracks), len(detections.index)))
        similarity = iou_matrix(np.array([t.predicted_box() for t in tracks]), detections.boxes)
        if fuse_score:
            similarity = similarity * detections.scores[None, :]
        if self.config.per_class:
            same = np.array([t.class_id for t in tracks])[:, None] == detections.class_ids[None, :]
            similarity = np.where(same, similarity, 0.0)
        return similarity

    @staticmethod
    def _apply(pairs: list[tuple[int, int]], tracks: list[_Track], detections: _Detections,
               matched: dict[int, _Track]) -> None:
        for row, col in pairs:
            tracks[row].match(detections.boxes[col], float(detections.scores[col]))
            matched[int(detections.index[col])] = tracks[row]

    def _confirm(self, track: _Track) -> None:
        track.confirmed = True
        track.track_id = self._next_id
        self._next_id += 1

    def _end_tracks(self, t_ns: int, fed: set[int]) -> None:
        """End tracks lost too long, degenerate, or out of the image and not measured this frame (`fed`:
        id() of the tracks that were), and lost duplicates of tracked ones."""
        max_lost_ns = self.config.max_lost_s * _NS_PER_S
        keep = []
        for track in self._tracks:
            mean = track.kalman.mean
            degenerate = not np.isfinite(mean).all() or mean[3] < 1.0 or mean[2] <= 0.0
            gone = t_ns - track.last_detection_ns > max_lost_ns
            left = id(track) not in fed and self._visible_fraction(track.predicted_box()) < self.config.min_visible
            if not (degenerate or gone or left):
                keep.append(track)
        self._tracks = self._without_duplicates(keep)

    def _visible_fraction(self, box: np.ndarray) -> float:
        width, height = self._image_size
        area = float((box[2] - box[0]) * (box[3] - box[1]))
        inside_w = max(0.0, min(float(box[2]), width) - max(float(box[0]), 0.0))
        inside_h = max(0.0, min(float(box[3]), height) - max(float(box[1]), 0.0))
        return inside_w * inside_h / area if area > 0 else 0.0

    def _without_duplicates(self, tracks: list[_Track]) -> list[_Track]:
        tracked = [t for t in tracks if t.confirmed and t.state is _State.TRACKED]
        lost = [t for t in tracks if t.confirmed and t.state is _State.LOST]
        if not tracked or not lost:
            return tracks
        overlap = iou_matrix(np.array([t.predicted_box() for t in tracked]), np.array([t.predicted_box() for t in lost]))
        drop = set()
        for i, j in zip(*np.nonzero(overlap >= self.config.duplicate_iou)):
            a, b = tracked[i], lost[j]
            if a.class_id != b.class_id and self.config.per_class:
                continue
            # ByteTrack keeps the one tracked for longer (first detection to last)
            drop.add(id(a) if a.last_detection_ns - a.born_ns <= b.last_detection_ns - b.born_ns else id(b))
        return [t for t in tracks if id(t) not in drop]


def _valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """Rows that are finite boxes with positive width and height."""
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        return finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _unmatched(items: list, pairs: list[tuple[int, int]], side: int) -> list:
    taken = {pair[side] for pair in pairs}
    return [item for i, item in enumerate(items) if i not in taken]


def _unmatched_mask(count: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    mask = np.ones(count, bool)
    mask[[col for _, col in pairs]] = False
    return mask
