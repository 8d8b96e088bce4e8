"""What a policy sees of a frame and what it decides for it, and the registry policies plug into.

Per frame, before any network runs, the detector (perception.detection.frames) hands its policy a
FrameContext (the frame's time, size and deadline, the watchdog's depth ceiling, the tracks, and
cheap signals computed only when asked: the tracks moved by optical flow, the change outside them)
and gets back a Plan: propagate (no network), or the network at an input pixel budget to an exit,
or to the deepest exit that still meets the deadline. A policy is a class with a `kind`, registered
with @register; the detector config's `policy.kind` names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar

import numpy as np

from perception.detection.network import FrameInference, StagedNetwork
from perception.detection.risk import Risk
from perception.latency import now_ns
from perception.tracking.flow import FlowResult
from perception.tracking.tracker import Track

if TYPE_CHECKING:
    from perception.detection.policies import PolicyConfig


# Full depth at a smaller input is taken as costing no more than the ceiling's exit at full size up to
# this factor: the estimates are p90s of recent runs, which move by about this much between runs under
# load, and where the two are that close (exit 0 at 512x288 against full depth at 384x224 on the 2-core
# VM: 17.4 against 16.9 ms) the choice would otherwise flip on noise to the far less accurate exit
# (docs/BENCHMARKS.md, "The watchdog's depth ceiling spent as a cost").
CEILING_COST_SPREAD = 1.15


@dataclass(frozen=True)
class Plan:
    """Propagate, or the network at `pixels` (None: the detector's budget) to `exit_index` (None: the
    deepest the deadline allows). `why` says which rule chose it, for counters and logs."""

    why: str
    propagate: bool = False
    pixels: int | None = None
    exit_index: int | None = None
    max_exit: int | None = None  # this frame's exit ceiling, when the policy spent the watchdog's as a cost


@dataclass
class FrameContext:
    """One frame as a policy sees it before deciding."""

    t_ns: int  # the frame's place on its source's timeline
    width: int
    height: int
    deadline_ns: int | None  # None: no deadline (deterministic replay, evaluation)
    max_exit: int  # the watchdog's depth ceiling
    network: StagedNetwork  # input sizes and cost estimates
    tracks: list[Track]  # the tracks seen on the last network frame (none lost)
    risk: Risk  # the last frame's output under the decision node's rules (perception.detection.risk)
    carried_track_ids: np.ndarray  # track id of each box moved() carries (0: untracked)
    frames_since_network: int | None  # None: no network frame yet (the first frame, or after a reset)
    ms_since_network: float | None
    ms_since_full_size: float | None  # since the last network frame at the detector's full pixel budget
    moved: Callable[[], FlowResult]  # the last frame's boxes moved here by flow (computed once, when asked)
    change: Callable[[float], float]  # share of the frame changed outside the tracks (when asked; exact above its argument)


class Policy(ABC):
    """Decides each frame's plan. `propagates`: whether it may ever propagate (the detector then
    keeps the flow frames that propagation and its signals need); `assesses_risk`: whether it reads
    `FrameContext.risk` (the detector then runs the decision rules on every frame's output)."""

    kind: ClassVar[str]
    propagates: ClassVar[bool] = False
    assesses_risk: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig, pixels: int) -> None:
        """`pixels`: the detector's input budget, the full size."""
        self.config = config
        self.pixels = pixels

    @abstractmethod
    def plan(self, frame: FrameContext) -> Plan:
        """What this frame gets."""

    def budgets(self) -> tuple[int, ...]:
        """Every input budget it may ask for: the detector warms each up (first runs are slow, and
        plans need cost estimates)."""
        return (self.pixels,)

    def budget(self, share: float) -> int:
        """The input pixel budget of a share of the detector's (`policy.sizes`)."""
        return max(1, int(self.pixels * share))

    def size_within_budget(self, frame: FrameContext, shares: list[float],
                           when_none_fits: float | None = None) -> tuple[float, int | None]:
        """The input size (one of `shares`, largest first) and the exit ceiling (None: the
        watchdog's) for a network frame, spending no more than the deadline and the watchdog allow.

        The deadline: the largest share at which the network reaches the deepest exit allowed
        before it, by the cost estimates, less `margin_ms`; the first without a deadline;
        `when_none_fits` (default the last, the cheapest) when none fits, its exit then chosen as
        the frame runs. The watchdog's depth ceiling (an exit below the deepest, when latency nears
        the budget) is spent as a cost: the largest smaller share whose full depth costs no more
        than that exit at the first share (within CEILING_COST_SPREAD) runs at full depth, and only
        when none does the ceiling's exit runs at the sizes above. On every measured frontier
        (docs/BENCHMARKS.md) a smaller input at full depth lies above a shallower exit at full size,
        and exit 0 at full size costs about as much as full depth at half of it; where nothing fits,
        full size ran exit 0 past the deadline far more often than the smallest size did ("Accuracy
        under a deadline")."""
        network = frame.network
        full_depth = network.exit_count - 1
        ceiling = min(frame.max_exit, full_depth)
        left = None if frame.deadline_ns is None else frame.deadline_ns - self.config.margin_ms * 1e6

        def cost(share: float, exit_index: int) -> int:  # as the frame would run (a direct graph or the parts)
            _, size = network.input_size(frame.width, frame.height, self.budget(share))
            return network.frame_cost_ns(size, exit_index, frame.deadline_ns, int(self.config.margin_ms * 1e6))

        def fits(cost_ns: int) -> bool:
            return left is None or now_ns() + cost_ns <= left

        if ceiling < full_depth:
            allowed = cost(shares[0], ceiling) * CEILING_COST_SPREAD  # what the watchdog lets this frame cost
            for share in shares[1:]:
                full_depth_ns = cost(share, full_depth)
                if full_depth_ns <= allowed and fits(full_depth_ns):
                    return share, full_depth
        if left is None:
            return shares[0], None
        fallback = shares[-1] if when_none_fits is None else when_none_fits
        return next((sh for sh in shares if fits(cost(sh, ceiling))), fallback), None


REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    REGISTRY[cls.kind] = cls
    return cls


def run_to_exit(network: StagedNetwork, inference: FrameInference, exit_index: int | None, deadline_ns: int | None,
                max_exit: int, margin_ns: int, refresh: bool = True) -> int:
    """Run `inference` to `exit_index` (under the ceiling `max_exit`), or, when it is None, to the deepest
    exit whose estimated remaining cost still ends `margin_ns` before the deadline: planned again after
    every trunk stage, so a stage that ran slow (a CPU suddenly busy) stops the frame at a shallower exit.
    A frame with time to spare runs the deepest allowed exit's direct graph instead
    (StagedNetwork.runs_direct; `refresh` False: never the parts in its place, as where the watchdog's
    ceiling was spent as full depth at the direct graph's cost). Returns the exit run; its raw output
    is in inference.raw_exits."""
    ceiling = min(max_exit, network.exit_count - 1)
    if exit_index is not None:
        chosen = ceiling if exit_index < 0 else min(exit_index, ceiling)
        network.run_exit(inference, chosen)
        return chosen
    if network.runs_direct(inference.size, ceiling, deadline_ns, margin_ns, refresh):
        network.run_exit(inference, ceiling)
        return ceiling
    chosen = deepest_fitting(network, inference, ceiling, deadline_ns, margin_ns)
    while inference.stages_done < network.manifest.exits[chosen].after_stage:
        network.run_stages(inference, inference.stages_done + 1)
        chosen = deepest_fitting(network, inference, chosen, deadline_ns, margin_ns)
    network.run_exit(inference, chosen)
    return chosen


def deepest_fitting(network: StagedNetwork, inference: FrameInference, ceiling: int, deadline_ns: int | None,
                    margin_ns: int) -> int:
    """The deepest exit up to `ceiling` that fits the deadline from where the frame stands (0 if none)."""
    if deadline_ns is None:
        return ceiling
    now = now_ns()
    return next((k for k in range(ceiling, -1, -1)
                 if now + network.remaining_cost_ns(inference, k) + margin_ns <= deadline_ns), 0)
