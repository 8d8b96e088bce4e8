"""The graph, defined once: every topic, its message type, who publishes it, and how often.

Like openpilot's cereal/services.py: the recorder, the latency collector, the watchdog's topic
monitor, replay, the live view and the launch checks all read this table, and no topic string
appears anywhere else. A topic's name is its ZeroMQ topic and its channel in a recording.

Rates are what the shipped launch files produce (launch/*.yaml: a 25-30 Hz source); a launch
whose source is slower sets the watchdog's `topics` overrides (nodes/watchdog.py). Per topic, the
watchdog's monitor reports, as Autoware's topic_state_monitor does:
    OK          the rate over the last `window_s` is at least `warn_rate_hz`
    WARN_RATE   below `warn_rate_hz`
    ERROR_RATE  below `error_rate_hz`: the topic's publishers count as down (fail-safe)
    TIMEOUT     nothing for `timeout_s`: down as well
A topic whose every publisher has said it is stopping (a replay at its end) is not expected.
"""

from __future__ import annotations

from dataclasses import dataclass

from perception.messages import Control, Decision, Detections, FrameHeader, Heartbeat, Message, WatchdogStatus


@dataclass(frozen=True, eq=False)  # each topic exists once, in this table: identity is equality, and hashing is cheap
class Topic:
    name: str  # ZeroMQ topic and recording channel
    message_type: type[Message]
    publishers: tuple[str, ...]  # nodes publishing it in the shipped launch files
    rate_hz: float | None  # nominal rate; None: on events only
    warn_rate_hz: float | None = None  # topic monitor thresholds; None: not monitored
    error_rate_hz: float | None = None
    timeout_s: float | None = None
    upstream: "Topic | None" = None  # the topic it is computed from: not expected while that one is not flowing
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.startswith("/") or not self.publishers:
            raise ValueError(f"topic {self.name!r}: a name starts with '/', and someone publishes it")
        monitored = (self.warn_rate_hz, self.error_rate_hz, self.timeout_s)
        if any(v is None for v in monitored) and any(v is not None for v in monitored):
            raise ValueError(f"topic {self.name}: warn_rate_hz, error_rate_hz and timeout_s go together")
        if self.monitored and not (0 <= self.error_rate_hz <= self.warn_rate_hz and self.timeout_s > 0):
            raise ValueError(f"topic {self.name}: need 0 <= error_rate_hz <= warn_rate_hz and timeout_s > 0")

    @property
    def key(self) -> str:
        """The name as counters and file names spell it: 'watchdog.status' for '/watchdog/status'."""
        return self.name.strip("/").replace("/", ".")

    @property
    def monitored(self) -> bool:
        return self.timeout_s is not None


PIPELINE_NODES = ("capture", "detector", "decision", "watchdog")

FRAMES = Topic("/frames", FrameHeader, ("capture",), 25.0, warn_rate_hz=8.0, error_rate_hz=4.0, timeout_s=0.5,
               description="a frame's header; its pixels are in the shared-memory ring or the next part")
DETECTIONS = Topic("/detections", Detections, ("detector",), 25.0, warn_rate_hz=8.0, error_rate_hz=4.0,
                   timeout_s=0.5, upstream=FRAMES, description="boxes, scores, classes and tracks of one frame")
DECISIONS = Topic("/decisions", Decision, ("decision", "watchdog"), 25.0, warn_rate_hz=8.0, error_rate_hz=4.0,
                  timeout_s=0.5, upstream=DETECTIONS, description="PROCEED / SLOW / BRAKE with its reason; the watchdog's fail-safes")
WATCHDOG_STATUS = Topic("/watchdog/status", WatchdogStatus, ("watchdog",), 10.0,
                        description="system state, depth ceiling, nodes and topics down")
CONTROL = Topic("/watchdog/control", Control, ("watchdog",), 1.0, description="the detector's depth ceiling")
HEARTBEAT = Topic("/heartbeat", Heartbeat, PIPELINE_NODES, 20.0, description="every node's liveness and counters")

TOPICS: tuple[Topic, ...] = (FRAMES, DETECTIONS, DECISIONS, WATCHDOG_STATUS, CONTROL, HEARTBEAT)
BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}
MONITORED: tuple[Topic, ...] = tuple(t for t in TOPICS if t.monitored)


def topic(name: str) -> Topic:
    """The topic called `name`; ValueError naming the known ones otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown topic {name!r} (known: {', '.join(BY_NAME)})") from None
