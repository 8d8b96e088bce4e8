"""Which frames put the vehicle at risk, so the detector spends full size and depth on them.

Risk is what the decision node would act on: its own rules (perception.decision, the same roi,
classes, thresholds and time-to-collision fit over each track's recent heights), applied to the
detector's last output with its thresholds widened by `margin` (time to collision up to margin x
slow_ttc_s; heights, the share of a box in the path and scores down to theirs / margin), so the
frames on which a decision may change already run at full size and depth. An object of a relevant class in the ego path that is
far and keeping its distance is not risk, and nothing beside the path is; but while anything
relevant stands in the path, no frame runs below full size (its box and its growth are what the
decision node judges). The rules must be the decision node's (`risk.rules` in configs/detector.yaml
is configs/decision.yaml's `rules`; tests/nodes/test_detector.py checks the shipped ones agree).

The ego path belongs to vehicle cameras: a launch for a static camera turns it off (`ego_path: false`),
and the detector then goes by change and time alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated

from perception.config import Range, check_ranges
from perception.decision import DecisionMaker, DecisionRules
from perception.detection.outputs import Output
from perception.messages import Action, NetworkPass


@dataclass(frozen=True)
class RiskConfig:
    """The detector config's `risk` section."""

    ego_path: bool = True  # false for a camera that does not drive: no path, no risk rule
    margin: Annotated[float, Range(1, 10)] = 1.5  # how far ahead of the decision node's SLOW thresholds risk begins
    rules: DecisionRules = field(default_factory=DecisionRules)  # the decision node's

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class Risk:
    """The last frame's assessment: `why` when it is a risk (the network at full size and depth), and
    whether anything relevant stands in the path (no smaller input then)."""

    why: str | None
    in_path: bool


NO_RISK = Risk(None, False)


class RiskRules:
    """The decision node's rules, widened by the margin, over the detector's class names."""

    def __init__(self, config: RiskConfig, class_names: list[str]) -> None:
        r, m = config.rules, config.margin
        widened = replace(r, slow_ttc_s=r.slow_ttc_s * m, brake_ttc_s=r.brake_ttc_s * m, min_in_path=r.min_in_path / m,
                          slow_height=r.slow_height / m, brake_height=r.brake_height / m, min_score=r.min_score / m)
        self._maker = DecisionMaker(widened, class_names, "detector")  # ValueError naming an unknown class

    @classmethod
    def of(cls, config: RiskConfig, class_names: list[str]) -> "RiskRules | None":
        """None when the ego path is off; ValueError naming classes the detector does not have."""
        return cls(config, class_names) if config.ego_path else None

    def assess(self, output: Output, width: int, height: int, t_ns: int, measured_by: NetworkPass | None,
               propagated: bool) -> Risk:
        """Called with every frame's output, in order (the time-to-collision fit needs each frame, the
        network pass that measured its boxes and whether they were carried by flow: growth is fitted
        within a pass, as the node does)."""
        action, _, target, detail = self._maker.assess(output.boxes, output.scores, output.class_ids, output.track_ids,
                                                       width, height, t_ns, measured_by, propagated)
        return Risk(detail if action >= Action.SLOW else None, target is not None)

    def reset(self) -> None:
        self._maker = DecisionMaker(self._maker.rules, self._maker.class_names, "detector")


