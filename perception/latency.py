"""The one clock and the one place that turns timestamps into latencies.

All timestamps are time.monotonic_ns() of this host. They are comparable between processes
on one host (CLOCK_MONOTONIC is system-wide on Linux), never across hosts: a message names the host
whose clock its stamps are in, and perception.clock converts it at the boundary.

PERCEPTION_CLOCK_SKEW_NS shifts this process's clock by that many ns: it stands in for another
host's monotonic clock when two "hosts" share one machine (tests, demos). Unset, now_ns is
time.monotonic_ns itself.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Iterable, Sequence

import numpy as np

from perception.config import Range
from perception.messages import Message, Stamp

CLOCK_SKEW_ENV = "PERCEPTION_CLOCK_SKEW_NS"
_SKEW_NS = int(os.environ.get(CLOCK_SKEW_ENV) or 0)


def _skewed_now_ns() -> int:
    return time.monotonic_ns() + _SKEW_NS


now_ns = _skewed_now_ns if _SKEW_NS else time.monotonic_ns

def wall_clock_offset_ns() -> int:
    """What to add to a time of this host's clock (now_ns) for Unix time in ns, measured now. A
    recording measures it once and adds it to every stamp, so its log times are wall-clock time and
    stay as monotonic as the clock they come from (an NTP step mid-drive moves none of them)."""
    before = now_ns()
    wall = time.time_ns()
    after = now_ns()
    return wall - (before + after) // 2


NS_PER_MS = 1_000_000
# A capture-to-decision budget, or a share of one: from a millisecond to 10 s.
BudgetMs = Annotated[float, Range(1, 10_000)]


def since_capture_ns(message: Message, at_ns: int | None = None) -> int:
    """Age of the frame a message descends from, at `at_ns` (default: now)."""
    return (now_ns() if at_ns is None else at_ns) - message.capture_ns


def stage_durations_ns(capture_ns: int, stamps: Sequence[Stamp]) -> dict[str, int]:
    """Time spent reaching each stamped stage from the one before it (the first from capture).

    A stage stamped twice (e.g. a message passed through two nodes that use the same stage name)
    accumulates, so the durations always add up to the last stamp's age.
    """
    durations: dict[str, int] = {}
    previous = capture_ns
    for stamp in stamps:
        durations[stamp.stage] = durations.get(stamp.stage, 0) + (stamp.t_ns - previous)
        previous = stamp.t_ns
    return durations


def percentiles_ms(samples_ns: Iterable[int], quantiles: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Percentiles, max, mean and jitter (standard deviation) of latency samples, in milliseconds."""
    values = np.fromiter(samples_ns, dtype=np.float64) / NS_PER_MS
    if values.size == 0:
        return {}
    result = {f"p{q:g}": float(np.percentile(values, q)) for q in quantiles}
    result.update(max=float(values.max()), mean=float(values.mean()), jitter=float(values.std()), count=float(values.size))
    return result
