"""The adaptive policy: per frame, no network, or the network at the input size the frame needs.

Rules, in order (the first that applies decides):
1. No network frame yet (the first frame, a new frame size, a scene cut): full size.
2. Risk (perception.detection.risk): a track in the ego path that is closing or within braking
   distance: full size, as deep as the deadline allows.
3. Time: `max_gap_ms` of the source's timeline since the network last ran, so one config means the
   same at 7, 10 and 30 fps; and never more than `max_propagated` frames in a row, whatever the
   timestamps say (a source whose media time stands still).
4. A track entering the view: at the frame's border and seen by the network fewer than
   `entering_hits` times (flow carries only its visible part; one leaving is lost by flow, rule 6).
5. Change outside the tracks (perception.tracking.change): something the tracks do not explain moved
   or appeared; full size, since a new object may be small and far.
6. Flow failure: a tracked box whose points were lost, or whose flow disagrees forward-backward.
Otherwise the frame is propagated (the last boxes moved by optical flow, perception.tracking.flow).

A network frame runs at the smallest of `policy.sizes` (shares of the detector's pixel budget, the first
the full size) at which every track stays at least `min_object_px` tall in the network's input while
nothing relevant stands in the ego path, and at full size at least every `full_size_every_ms` (a scout
for new and far objects). Frames of rules 1, 2 and 5 run at full size, as deep as the deadline allows;
any other frame under a deadline too close for full size at full depth takes a smaller size before a
shallower exit (the smaller input at full depth lies above the shallow exit on every measured
frontier: docs/BENCHMARKS.md), and the size its objects need when none fits (Policy.size_within_budget).
Nothing relevant in the ego path runs below full size, whatever the deadline or the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import numpy as np

from perception.config import Fraction, NonNegativeInt, Range, check_ranges
from perception.detection.planning import FrameContext, Plan, Policy


@dataclass(frozen=True)
class AdaptiveConfig:
    """The `policy.adaptive` section."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {"sizes": "policy.sizes"}  # shared with the deadline policy since 2026-12-03

    max_gap_ms: Annotated[float, Range(0, 1000)] = 100.0
    max_propagated: Annotated[int, Range(0, 30)] = 5
    full_size_every_ms: Annotated[float, Range(0, 10_000)] = 1000.0
    min_object_px: Annotated[float, Range(1, 4096)] = 16.0
    max_change: Fraction = 0.02  # share of the frame changed outside the tracks
    max_fb_error_px: Annotated[float, Range(0, 1000, low_open=True)] = 2.0
    border: Annotated[float, Range(0, 0.5)] = 0.02  # of the frame's side: a track this close to an edge ...
    entering_hits: NonNegativeInt = 4  # ... and detected fewer times than this is entering

    def __post_init__(self) -> None:
        check_ranges(self)


class AdaptivePolicy(Policy):
    kind = "adaptive"
    propagates = True
    assesses_risk = True

    @property
    def settings(self) -> AdaptiveConfig:
        return self.config.adaptive

    def budgets(self) -> tuple[int, ...]:
        return tuple(self.budget(share) for share in self.config.sizes)

    def plan(self, frame: FrameContext) -> Plan:
        s = self.settings
        if frame.frames_since_network is None:
            return self._network(frame, "first frame", full=True)
        if frame.risk.why:
            return self._network(frame, f"risk: {frame.risk.why}", full=True)
        if frame.ms_since_network >= s.max_gap_ms or frame.frames_since_network >= s.max_propagated:
            return self._network(frame, "time")
        for track in frame.tracks:
            if track.hits < s.entering_hits and self._at_border(track.box, frame.width, frame.height):
                return self._network(frame, "entering")
        if frame.change(s.max_change) > s.max_change:
            return self._network(frame, "change", full=True)
        moved = frame.moved()
        tracked = frame.carried_track_ids > 0  # a low-score box nobody tracks may fail to flow without harm
        if (~moved.ok & tracked).any():
            return self._network(frame, "flow lost")
        if tracked.any() and float(moved.fb_error[tracked].max()) > s.max_fb_error_px:
            return self._network(frame, "flow inconsistent")
        return Plan("propagate", propagate=True)

    def _at_border(self, box: np.ndarray, width: int, height: int) -> bool:
        x1, y1, x2, y2 = (float(v) for v in box)
        mx, my = self.settings.border * width, self.settings.border * height
        return x1 < mx or y1 < my or x2 > width - mx or y2 > height - my

    def _network(self, frame: FrameContext, why: str, full: bool = False) -> Plan:
        """The network at the size the frame needs: full size when `full` or anything relevant stands
        in the ego path (as deep as the deadline allows), else the smallest that keeps the tracks
        tall enough, or full size when a scout is due, made smaller still if the deadline or the
        watchdog's ceiling cannot take it at full depth; that size when nothing fits."""
        s = self.settings
        shares = list(self.config.sizes)
        if full or frame.risk.in_path:
            return Plan(why, pixels=self.budget(shares[0]))
        scout_due = frame.ms_since_full_size is None or frame.ms_since_full_size >= s.full_size_every_ms
        if scout_due:
            share = shares[0]
        else:
            share = next((sh for sh in reversed(shares) if self._keeps_objects(frame, self.budget(sh))), shares[0])
        share, max_exit = self.size_within_budget(frame, [sh for sh in shares if sh <= share], when_none_fits=share)
        return Plan(why if share == shares[0] else f"{why}, {share:g} size", pixels=self.budget(share),
                    max_exit=max_exit)

    def _keeps_objects(self, frame: FrameContext, pixels: int) -> bool:
        """Every track stays at least min_object_px tall at this input budget, and nothing relevant
        stands in the ego path (the decision node judges its box and growth: full size for it)."""
        if frame.risk.in_path:
            return False
        if not frame.tracks:
            return True
        box, _ = frame.network.input_size(frame.width, frame.height, pixels)
        scale = min(box[0] / frame.width, box[1] / frame.height)
        return min(float(t.box[3] - t.box[1]) for t in frame.tracks) * scale >= self.settings.min_object_px
