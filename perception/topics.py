"""Every topic: its message type, how often it comes and the limits it is monitored by.

Like openpilot's cereal/services.py, this table holds types, rates and limits only; who publishes
and who reads what is the launch file's graph (perception.graph). A node output is a topic: the
output a launch file names (`capture/frames`) is the topic whose `output` it is, and a topic's
`name` is its ZeroMQ topic and its channel in a recording.

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
    output: str  # the output name a launch file gives it: `inputs: {frames: capture/frames}`
    message_type: type[Message]
    rate_hz: float | None  # nominal rate; None: on events only
    warn_rate_hz: float | None = None  # topic monitor thresholds; None: not monitored
    error_rate_hz: float | None = None
    timeout_s: float | None = None
    upstream: "Topic | None" = None  # the topic it is computed from: not expected while that one is not flowing
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.startswith("/") or not self.output.isidentifier():
            raise ValueError(f"topic {self.name!r}: a name starts with '/', an output name is an identifier")
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


FRAMES = Topic("/frames", "frames", FrameHeader, 25.0, warn_rate_hz=8.0, error_rate_hz=4.0, timeout_s=0.5,
               description="a frame's header; its pixels are in the shared-memory ring or the next part")
DETECTIONS = Topic("/detections", "detections", Detections, 25.0, warn_rate_hz=8.0, error_rate_hz=4.0,
                   timeout_s=0.5, upstream=FRAMES, description="boxes, scores, classes and tracks of one frame")
DECISIONS = Topic("/decisions", "decisions", Decision, 25.0, warn_rate_hz=8.0, error_rate_hz=4.0,
                  timeout_s=0.5, upstream=DETECTIONS, description="PROCEED / SLOW / BRAKE with its reason; the watchdog's fail-safes")
WATCHDOG_STATUS = Topic("/watchdog/status", "status", WatchdogStatus, 10.0,
                        description="system state, depth ceiling, nodes and topics down")
CONTROL = Topic("/watchdog/control", "control", Control, 1.0, description="the detector's depth ceiling")
HEARTBEAT = Topic("/heartbeat", "heartbeat", Heartbeat, 20.0,
                  description="every node's liveness and counters: an output of every node, declared or not")

TOPICS: tuple[Topic, ...] = (FRAMES, DETECTIONS, DECISIONS, WATCHDOG_STATUS, CONTROL, HEARTBEAT)
BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}
BY_OUTPUT: dict[str, Topic] = {t.output: t for t in TOPICS}
MONITORED: tuple[Topic, ...] = tuple(t for t in TOPICS if t.monitored)


def topic(name: str) -> Topic:
    """The topic called `name`; ValueError naming the known ones otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown topic {name!r} (known: {', '.join(BY_NAME)})") from None


def topic_of_output(output: str) -> Topic:
    """The topic a node output called `output` carries; ValueError naming the known outputs otherwise."""
    try:
        return BY_OUTPUT[output]
    except KeyError:
        raise ValueError(f"unknown output {output!r} (outputs: {', '.join(BY_OUTPUT)})") from None
