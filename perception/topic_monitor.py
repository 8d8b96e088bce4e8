"""Per-topic rate and liveness, as Autoware's topic_state_monitor judges them, free of sockets and
clocks so it can be tested exactly. The watchdog feeds it every message it receives on a monitored
topic (perception.topics: those with warn/error rates and a timeout) and asks for the states.

States (messages.TopicState):
    NOT_RECEIVED  nothing yet, within the start-up grace
    OK            rate over the last `window_s` at or above warn_rate_hz
    WARN_RATE     below warn_rate_hz
    ERROR_RATE    below error_rate_hz                    } down: the watchdog fails safe
    TIMEOUT       nothing for timeout_s (or no first message by the end of the grace) }
    IDLE          not expected now: every publisher said it is stopping (a replay at its end), or
                  the topic it is computed from is not flowing (no frames, so no detections)

A rate is judged only over a stretch the topic was expected all along: the window starts no
earlier than the topic's first message and the moment its upstream started flowing again, and
a stretch shorter than half the window is not judged (a rate from two messages means nothing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Annotated

from perception.config import Range, check_ranges

from perception.messages import TopicHealth, TopicState
from perception.topics import Topic

DOWN_STATES = frozenset({TopicState.ERROR_RATE, TopicState.TIMEOUT})


@dataclass(frozen=True)
class TopicLimits:
    """Thresholds for one topic; the topic table's are the defaults (watchdog config `topics`)."""

    warn_rate_hz: Annotated[float, Range(0, 10_000)]
    error_rate_hz: Annotated[float, Range(0, 10_000)]
    timeout_s: Annotated[float, Range(0, 3600, low_open=True)]

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.error_rate_hz <= self.warn_rate_hz:
            raise ValueError("need error_rate_hz <= warn_rate_hz")

    @staticmethod
    def of(topic: Topic) -> "TopicLimits":
        return TopicLimits(topic.warn_rate_hz, topic.error_rate_hz, topic.timeout_s)


def as_health(judged: dict[str, tuple[TopicState, float]]) -> tuple[TopicHealth, ...]:
    return tuple(TopicHealth(topic=name, state=state, rate_hz=round(rate, 2)) for name, (state, rate) in judged.items())


class _TopicTrack:
    def __init__(self, topic: Topic, limits: TopicLimits, window_ns: int, publishers: set[str]) -> None:
        self.topic = topic
        self.limits = limits
        self.window_ns = window_ns
        self.timeout_ns = int(limits.timeout_s * 1e9)
        self.publishers = publishers
        self.upstream: _TopicTrack | None = None  # the track of the topic it is computed from, when monitored
        self.arrivals: deque[int] = deque()
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.flowing_since_ns: int | None = None  # start of the current unbroken stretch of messages

    def add(self, t_ns: int) -> None:
        if self.last_ns is None or t_ns - self.last_ns > self.timeout_ns:
            self.flowing_since_ns = t_ns
        self.first_ns = t_ns if self.first_ns is None else self.first_ns
        self.last_ns = t_ns
        self.arrivals.append(t_ns)
        self._trim(t_ns)

    def _trim(self, now_ns: int) -> None:
        while self.arrivals and self.arrivals[0] <= now_ns - self.window_ns:
            self.arrivals.popleft()

    def flowing(self, now_ns: int) -> bool:
        return self.last_ns is not None and now_ns - self.last_ns <= self.timeout_ns

    def count_since(self, start_ns: int) -> int:
        """Arrivals at or after `start_ns` (they are in time order)."""
        if not self.arrivals or self.arrivals[0] >= start_ns:
            return len(self.arrivals)  # the usual case: the window starts before them all
        return sum(1 for t in self.arrivals if t >= start_ns)


class TopicMonitor:
    def __init__(self, topics: dict[Topic, TopicLimits], publishers: dict[Topic, list[str]], start_ns: int,
                 grace_ms: float, window_s: float = 1.0) -> None:
        """Watches each of `topics` that has `publishers` (node names: those a watchdog reads it
        from). A topic is not expected while the topic it is computed from (`Topic.upstream`, when
        monitored too) is not flowing, or once all its publishers said they are stopping."""
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._tracks = {topic: _TopicTrack(topic, limits, int(window_s * 1e9),
                                           set(publishers[topic]))
                        for topic, limits in topics.items() if publishers.get(topic)}
        for track in self._tracks.values():
            track.upstream = self._tracks.get(track.topic.upstream) if track.topic.upstream else None
        self._grace_end_ns = start_ns + int(grace_ms * 1e6)

    def on_message(self, topic: Topic, now_ns: int) -> None:
        if topic in self._tracks:
            self._tracks[topic].add(now_ns)

    def judge(self, now_ns: int, departed: set[str]) -> dict[str, tuple[TopicState, float]]:
        """Topic name -> (state, measured rate in Hz) now; `departed`: nodes that said they are
        stopping. Plain tuples: the watchdog asks on every tick, a status needs them far less often."""
        judged = {}
        for track in self._tracks.values():
            track._trim(now_ns)
            judged[track.topic.name] = self._judge(track, now_ns, departed)
        return judged

    def health(self, now_ns: int, departed: set[str]) -> tuple[TopicHealth, ...]:
        """Every monitored topic's state and measured rate now, as a status reports them."""
        return as_health(self.judge(now_ns, departed))

    def _judge(self, track: _TopicTrack, now_ns: int, departed: set[str]) -> tuple[TopicState, float]:
        limits = track.limits
        if track.publishers <= departed:
            return TopicState.IDLE, 0.0
        upstream = track.upstream
        if upstream is not None and not upstream.flowing(now_ns):
            return TopicState.IDLE, 0.0
        if track.last_ns is None:
            return (TopicState.NOT_RECEIVED if now_ns < self._grace_end_ns else TopicState.TIMEOUT), 0.0
        if now_ns - track.last_ns > track.timeout_ns:
            return TopicState.TIMEOUT, 0.0
        start = max(now_ns - track.window_ns, track.first_ns)
        if upstream is not None and upstream.flowing_since_ns is not None:
            start = max(start, upstream.flowing_since_ns)
        span_ns = now_ns - start
        rate = track.count_since(start) / (span_ns / 1e9) if span_ns > 0 else 0.0
        if span_ns < track.window_ns // 2:
            return TopicState.OK, rate  # too short a stretch to judge
        if rate < limits.error_rate_hz:
            return TopicState.ERROR_RATE, rate
        if rate < limits.warn_rate_hz:
            return TopicState.WARN_RATE, rate
        return TopicState.OK, rate
