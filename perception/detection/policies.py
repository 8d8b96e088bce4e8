"""The policies a detector can run, by `policy.kind` (perception.detection.planning.REGISTRY):

- fixed: the network on every frame, at the detector's pixel budget, to `exit` (-1: the deepest).
- interval: the same every `interval` frames, the tracks moved by optical flow in between: the fixed
  keyframe configurations the Pareto sweep (perception pareto) compares the adaptive policy with.
- deadline: the network on every frame, as deep as the frame's deadline allows, at the first of
  `sizes` (1.0: the pixel budget) or, when the deadline cannot take that at full depth, at the
  largest of `sizes` that it can (the smallest when none can); under the watchdog's depth ceiling,
  full depth at a smaller size when that costs no more than the ceiling's exit at full size.
- adaptive (perception.detection.adaptive): input size, depth and propagation chosen per frame.

Every policy respects the watchdog's depth ceiling (deadline and adaptive spend it as a cost, in
Policy.size_within_budget); without a deadline (deterministic replay,
evaluation) `deadline` runs full depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from perception.config import Length, Range, check_ranges
from perception.detection.adaptive import AdaptiveConfig, AdaptivePolicy
from perception.detection.planning import REGISTRY, FrameContext, Plan, Policy, register


SizeShare = Annotated[float, Range(0.05, 4.0)]  # an input budget as a share of the detector's


@dataclass(frozen=True)
class PolicyConfig:
    """The detector config's `policy` section: `kind` names a registered policy; each reads its keys."""

    kind: str = "deadline"
    exit: Annotated[int, Range(-1, 63)] = -1  # fixed, interval: the exit (-1: the deepest)
    interval: Annotated[int, Range(1, 30)] = 2  # interval: the network every this many frames
    margin_ms: Annotated[float, Range(0, 1000)] = 2.0  # deadline, adaptive: slack kept before the deadline
    # deadline, adaptive: input budgets as shares of the detector's, largest (the full size) first
    sizes: Annotated[list[SizeShare], Length(1, 8)] = field(default_factory=lambda: [1.0, 0.5])
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.kind not in REGISTRY:
            raise ValueError(f"kind must be one of {', '.join(sorted(REGISTRY))}, got {self.kind!r}")
        if sorted(self.sizes, reverse=True) != list(self.sizes) or len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes must go from the largest to the smallest, each once, got {self.sizes}")


@register
class FixedPolicy(Policy):
    kind = "fixed"

    def plan(self, frame: FrameContext) -> Plan:
        return Plan("every frame", pixels=self.pixels, exit_index=self.config.exit)


@register
class IntervalPolicy(Policy):
    kind = "interval"
    propagates = True

    def plan(self, frame: FrameContext) -> Plan:
        since = frame.frames_since_network
        if since is None or since + 1 >= self.config.interval:
            return Plan("keyframe interval", pixels=self.pixels, exit_index=self.config.exit)
        return Plan("between keyframes", propagate=True)


@register
class DeadlinePolicy(Policy):
    kind = "deadline"

    def budgets(self) -> tuple[int, ...]:
        return tuple(self.budget(share) for share in self.config.sizes)

    def plan(self, frame: FrameContext) -> Plan:
        share, max_exit = self.size_within_budget(frame, list(self.config.sizes))
        why = "every frame" if share == self.config.sizes[0] else \
            f"every frame, {share:g} size ({'deadline' if max_exit is None else 'depth ceiling'})"
        return Plan(why, pixels=self.budget(share), max_exit=max_exit)


register(AdaptivePolicy)


def make_policy(config: PolicyConfig, pixels: int) -> Policy:
    return REGISTRY[config.kind](config, pixels)


__all__ = ["PolicyConfig", "make_policy", "REGISTRY"]
