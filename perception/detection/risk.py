"""Which tracks put the vehicle at risk, so the detector spends full size and depth on their frames.

Risk is a track of a class the vehicle must not hit, in the ego path (its ground contact, the bottom
edge of its box, inside the path polygon) *and* either closing (time to collision from the growth of
its box under `closing_ttc_s`) or already within braking distance (a box at least `near_height` of
the image tall), each with a `margin`: the rule fires that much ahead of the decision node's own
thresholds, so the frames on which a decision may change already run at full size and depth (the
tracker's growth rate, from network frames, trails the decision node's fit over every frame). A car ahead keeping its distance is not risk, and neither is anything beside the
road. The path, classes and thresholds mean what the decision node's rules mean (perception.decision:
roi, classes, min_in_path, slow_ttc_s, slow_height) and default to its defaults; a launch that changes
one side's should change both (tests/nodes/test_detector.py checks the shipped configs agree).

The ego path belongs to vehicle cameras: a launch for a static camera turns it off (`ego_path: false`),
and the detector then goes by change and time alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import numpy as np

from perception.config import Fraction, Length, Range, check_ranges
from perception.decision import DEFAULT_CLASSES, DEFAULT_ROI, DecisionRules, share_in_path
from perception.tracking.tracker import Track

_DECISION_DEFAULTS = DecisionRules()


@dataclass(frozen=True)
class RiskConfig:
    """The detector config's `risk` section."""

    ego_path: bool = True  # false for a camera that does not drive: no path, no risk rule
    roi: Annotated[list[tuple[Fraction, Fraction]], Length(3, 64)] = field(default_factory=lambda: list(DEFAULT_ROI))
    classes: Annotated[list[str], Length(1)] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    min_in_path: Annotated[float, Range(0, 1, low_open=True)] = _DECISION_DEFAULTS.min_in_path
    near_height: Annotated[float, Range(0, 1, low_open=True)] = _DECISION_DEFAULTS.slow_height
    closing_ttc_s: Annotated[float, Range(0, 3600, low_open=True)] = _DECISION_DEFAULTS.slow_ttc_s
    margin: Annotated[float, Range(1, 10)] = 1.5  # fire at up to margin x closing_ttc_s, down to near_height / margin

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class RiskRules:
    """RiskConfig over a detector's class ids."""

    roi: np.ndarray
    class_ids: frozenset[int]
    min_in_path: float
    near_height: float
    closing_ttc_s: float

    @classmethod
    def of(cls, config: RiskConfig, class_names: list[str]) -> "RiskRules | None":
        """None when the ego path is off; ValueError naming classes the detector does not have."""
        if not config.ego_path:
            return None
        unknown = [c for c in config.classes if c not in class_names]
        if unknown:
            raise ValueError(f"risk.classes {unknown} are not classes of the detector")
        return cls(np.array(config.roi, np.float64), frozenset(class_names.index(c) for c in config.classes),
                   config.min_in_path, config.near_height / config.margin, config.closing_ttc_s * config.margin)

    def why(self, track: Track, width: int, height: int) -> str | None:
        """'near' or 'closing' when this track is in the ego path and a risk, else None."""
        if track.class_id not in self.class_ids:
            return None
        x1, y1, x2, y2 = (float(v) for v in track.box)
        if share_in_path((x1, y1, x2, y2), width, height, self.roi) < self.min_in_path:  # as the decision node judges it
            return None
        if (y2 - y1) / height >= self.near_height:
            return "near"
        if track.height_rate > 0 and 1.0 / track.height_rate < self.closing_ttc_s:
            return "closing"
        return None
