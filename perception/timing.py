"""Rate keeping against the monotonic clock, without drift and without bursts after a stall."""

from __future__ import annotations

from perception.latency import now_ns


class RateKeeper:
    """Deadlines at start + k * period. A loop that falls more than a period behind is re-anchored
    instead of bursting to catch up (a burst of stale frames helps nobody); each such slip is counted."""

    def __init__(self, hz: float | None) -> None:
        if hz is not None and hz <= 0:
            raise ValueError(f"rate must be positive, got {hz}")
        self.period_ns = None if hz is None else int(round(1e9 / hz))
        self._next_ns: int | None = None
        self.slips = 0

    def next_deadline(self, at_ns: int | None = None) -> int:
        """When the next iteration should start; call once per iteration."""
        now = now_ns() if at_ns is None else at_ns
        if self.period_ns is None:
            return now
        if self._next_ns is None:
            self._next_ns = now
        else:
            self._next_ns += self.period_ns
            if now - self._next_ns > self.period_ns:
                self.slips += 1
                self._next_ns = now
        return self._next_ns


class Pacer:
    """When to publish a frame: on the source's own timeline (scaled by `speed`), at a fixed rate, or at
    once. A source paced by its device (a camera) is never waited for: `rate: source` reads it as it delivers."""

    def __init__(self, rate: str | float, speed: float = 1.0, paced_by_device: bool = False) -> None:
        self.rate = rate
        self.speed = speed
        self.follow_media = rate == "source" and not paced_by_device
        self.fixed = RateKeeper(rate) if isinstance(rate, float) else None
        self._anchor: tuple[int, int] | None = None  # (media_ns, monotonic ns) of the first frame

    def deadline(self, media_ns: int) -> int:
        now = now_ns()
        if self.fixed is not None:
            return self.fixed.next_deadline(now)
        if not self.follow_media:
            return now
        if self._anchor is None:
            self._anchor = (media_ns, now)
        return self._anchor[1] + int((media_ns - self._anchor[0]) / self.speed)

    def describe(self) -> str:
        if self.fixed is not None:
            return f"at {self.rate:g} Hz"
        return f"on recorded time x{self.speed:g}" if self.follow_media else "as fast as frames come"


class Periodic:
    """Something done every `period_s` from a loop (a report, a status, a re-sent command): `due()`
    says when, once per period, without drift and without a burst after a stall. The one place
    for the "next_report += period" arithmetic every loop would otherwise write for itself."""

    def __init__(self, period_s: float, first_now: bool = False) -> None:
        if period_s <= 0:
            raise ValueError(f"period must be positive, got {period_s}")
        self.period_ns = int(period_s * 1e9)
        self._next_ns = now_ns() + (0 if first_now else self.period_ns)

    def due(self, at_ns: int | None = None) -> bool:
        now = now_ns() if at_ns is None else at_ns
        if now < self._next_ns:
            return False
        self._next_ns += self.period_ns
        if self._next_ns <= now:  # fell a whole period behind: skip the missed ones
            self._next_ns = now + self.period_ns
        return True
