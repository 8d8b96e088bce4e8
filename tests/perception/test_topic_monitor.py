"""Per-topic rate and liveness with time injected (perception.topic_monitor), and the watchdog's
fail-safe when a topic goes down while every node still heartbeats."""

import pytest

from perception.messages import Action, FrameHeader, FrameTransport, Heartbeat, NodeState, Reason, SystemState, TopicState
from perception.topic_monitor import TopicLimits, TopicMonitor
from perception.topics import DECISIONS, DETECTIONS, FRAMES, MONITORED
from perception.watchdog import WatchdogCore, WatchdogRules

MS = 1_000_000
T0 = 1_000 * MS
LIMITS = TopicLimits(warn_rate_hz=10.0, error_rate_hz=4.0, timeout_s=0.5)
PUBLISHERS = {FRAMES: ["capture"], DETECTIONS: ["detector"], DECISIONS: ["decision"]}  # as launch/replay.yaml's watchdog reads them


def monitor(grace_ms: float = 1000.0) -> TopicMonitor:
    return TopicMonitor({t: LIMITS for t in (FRAMES, DETECTIONS, DECISIONS)}, PUBLISHERS, T0, grace_ms)


def feed(m: TopicMonitor, topic, hz: float, start_ns: int, end_ns: int) -> None:
    t = start_ns
    while t < end_ns:
        m.on_message(topic, t)
        t += int(1e9 / hz)


def states(m: TopicMonitor, now_ns: int, departed: set[str] = frozenset()) -> dict[str, TopicState]:
    return {h.topic: h.state for h in m.health(now_ns, set(departed))}


def test_rates_are_ok_warn_or_error_by_the_thresholds():
    m = monitor()
    end = T0 + 2000 * MS
    feed(m, FRAMES, 25, T0, end)
    feed(m, DETECTIONS, 7, T0, end)  # below warn (10), above error (4)
    feed(m, DECISIONS, 3, T0, end)  # below error
    health = {h.topic: h for h in m.health(end, set())}
    assert [health[t.name].state for t in (FRAMES, DETECTIONS, DECISIONS)] == [
        TopicState.OK, TopicState.WARN_RATE, TopicState.ERROR_RATE]
    assert health[FRAMES.name].rate_hz == pytest.approx(25, abs=1.5)


def test_nothing_yet_is_not_received_within_the_grace_and_a_timeout_after_it():
    m = monitor(grace_ms=1000)
    assert states(m, T0 + 900 * MS)[FRAMES.name] == TopicState.NOT_RECEIVED
    assert states(m, T0 + 1100 * MS)[FRAMES.name] == TopicState.TIMEOUT


def test_a_topic_silent_for_longer_than_its_timeout_is_timed_out():
    m = monitor()
    feed(m, FRAMES, 25, T0, T0 + 1000 * MS)
    assert states(m, T0 + 1400 * MS)[FRAMES.name] == TopicState.OK
    assert states(m, T0 + 1600 * MS)[FRAMES.name] == TopicState.TIMEOUT


def test_a_topic_whose_publishers_stopped_or_whose_input_stopped_is_idle_not_down():
    """The end of a replay: capture says it is stopping, frames stop, so detections and decisions stop."""
    m = monitor()
    end = T0 + 1000 * MS
    for topic in (FRAMES, DETECTIONS, DECISIONS):
        feed(m, topic, 25, T0, end)
    later = states(m, end + 2000 * MS, departed={"capture"})
    assert later == {FRAMES.name: TopicState.IDLE, DETECTIONS.name: TopicState.IDLE, DECISIONS.name: TopicState.IDLE}
    # Frames still flowing but nothing computed from them: the detector publishes nothing.
    m = monitor()
    feed(m, FRAMES, 25, T0, end + 2000 * MS)
    feed(m, DETECTIONS, 25, T0, end)
    assert states(m, end + 2000 * MS)[DETECTIONS.name] == TopicState.TIMEOUT


def test_a_rate_is_not_judged_across_a_gap_in_its_input():
    """Frames resume after a pause: detections are judged from then on, not over the pause."""
    m = monitor()
    feed(m, FRAMES, 25, T0, T0 + 1000 * MS)
    feed(m, DETECTIONS, 25, T0, T0 + 1000 * MS)
    resume = T0 + 3000 * MS
    feed(m, FRAMES, 25, resume, resume + 700 * MS)
    feed(m, DETECTIONS, 25, resume, resume + 700 * MS)
    assert states(m, resume + 700 * MS)[DETECTIONS.name] == TopicState.OK


def test_limits_are_validated():
    with pytest.raises(ValueError, match="error_rate_hz <= warn_rate_hz"):
        TopicLimits(warn_rate_hz=1, error_rate_hz=5, timeout_s=1)
    with pytest.raises(ValueError, match="not monitored topics"):
        WatchdogRules(topics={"/heartbeat": LIMITS})
    assert {t.name for t in MONITORED} == {FRAMES.name, DETECTIONS.name, DECISIONS.name}


def test_the_watchdog_brakes_when_the_detector_heartbeats_but_publishes_nothing():
    """Heartbeats alone cannot see this: every node is alive, yet no detections come."""
    w = WatchdogCore(WatchdogRules(startup_grace_ms=0, topics={DETECTIONS.name: LIMITS}), "watchdog", T0,
                     ["capture", "detector"], PUBLISHERS)
    t = T0
    for i in range(1, 40):  # 25 Hz frames for 1.5 s; detections stop after 0.5 s
        t = T0 + i * 40 * MS
        for node in ("capture", "detector"):
            w.on_heartbeat(Heartbeat(frame_id=0, capture_ns=0, node=node, pid=1, seq=i, sent_ns=0, state=NodeState.OK), t)
        w.on_message(FRAMES, t)
        w.on_frame(FrameHeader(frame_id=i, capture_ns=t, media_ns=0, width=8, height=8, channels=3,
                               transport=FrameTransport.INLINE))
        if i <= 12:
            w.on_message(DETECTIONS, t)
    out = w.tick(t)
    failsafes = [d for d in out.decisions if d.reason == Reason.TOPIC_DOWN]
    assert failsafes and failsafes[0].action == Action.BRAKE and "/detections TIMEOUT" in failsafes[0].detail
    status = w.status()
    assert status.state == SystemState.FAILSAFE and status.topics_down == (DETECTIONS.name,)
    assert status.nodes_down == () and status.counters["topic_down_events"] == 1


def test_a_renamed_capture_node_that_stops_leaves_its_topic_idle_not_down():
    """A launch that calls its capture node `camera_front`: the watchdog is told who publishes the
    frames it reads, so the end of a replay is not taken for a dead camera."""
    m = TopicMonitor({FRAMES: LIMITS}, {FRAMES: ["camera_front"]}, T0, 1000.0)
    feed(m, FRAMES, 25, T0, T0 + 1000 * MS)
    assert states(m, T0 + 3000 * MS, departed={"capture"})[FRAMES.name] == TopicState.TIMEOUT
    assert states(m, T0 + 3000 * MS, departed={"camera_front"})[FRAMES.name] == TopicState.IDLE
