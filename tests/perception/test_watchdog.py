"""The watchdog's rules with time injected: exact deadlines, liveness and depth hysteresis."""

import pytest

from perception.messages import Action, Decision, FrameHeader, FrameTransport, Heartbeat, NodeState, Reason, SystemState
from perception.topics import DECISIONS, DETECTIONS, FRAMES
from perception.watchdog import WatchdogCore, WatchdogRules

MS = 1_000_000
T0 = 1_000 * MS
PUBLISHERS = {FRAMES: ["capture"], DETECTIONS: ["detector"], DECISIONS: ["decision"]}  # whom it reads each topic from


def frame(i: int, capture_ns: int) -> FrameHeader:
    return FrameHeader(frame_id=i, capture_ns=capture_ns, media_ns=0, width=8, height=8, channels=3,
                       transport=FrameTransport.INLINE)


def decision(i: int, capture_ns: int) -> Decision:
    return Decision(frame_id=i, capture_ns=capture_ns, action=Action.PROCEED, reason=Reason.CLEAR, decided_by="decision")


def beat(node: str, state=NodeState.OK) -> Heartbeat:
    return Heartbeat(frame_id=0, capture_ns=0, node=node, pid=1, seq=1, sent_ns=0, state=state)


def core(**rules) -> WatchdogCore:
    # Topic rates are tested in test_topic_monitor.py and below; these tests feed no topic traffic.
    rules = {"startup_grace_ms": 0, "heartbeat_timeout_ms": 300, "monitored_topics": [], **rules}
    watchdog = WatchdogCore(WatchdogRules(**rules), "watchdog", T0, ["detector"], PUBLISHERS, "detector")
    watchdog.on_heartbeat(beat("detector"), T0)
    return watchdog


def test_an_unanswered_frame_gets_a_brake_exactly_at_its_deadline():
    w = core()
    w.on_frame(frame(7, T0))
    assert w.next_wakeup_ns() == T0 + 100 * MS
    assert w.tick(T0 + 100 * MS - 1).decisions == []
    out = w.tick(T0 + 100 * MS)
    assert len(out.decisions) == 1
    failsafe = out.decisions[0]
    assert (failsafe.frame_id, failsafe.capture_ns, failsafe.action, failsafe.reason) == (7, T0, Action.BRAKE, Reason.DEADLINE_MISS)
    assert failsafe.decided_by == "watchdog" and w.counters["deadline_misses"] == 1
    assert list(w.failsafe_delay_ns) == [0]


def test_a_decision_for_a_newer_frame_answers_older_ones():
    w = core()
    for i in range(3):
        w.on_frame(frame(i, T0 + i * 40 * MS))
    w.on_decision(decision(2, T0 + 80 * MS), T0 + 95 * MS)  # frames 0 and 1 were skipped on purpose
    w.on_heartbeat(beat("detector"), T0 + 150 * MS)
    assert w.tick(T0 + 200 * MS).decisions == []  # past frame 0's and 1's deadlines
    assert w.counters["deadline_misses"] == 0 and w.next_wakeup_ns() is None


def test_a_frame_from_another_host_gets_its_deadline_widened_and_a_decision_within_the_clocks_uncertainty():
    """The frame's stamps were converted from the camera host's clock with 2 ms uncertainty; the
    decision's copy was converted by the detector's own estimate, a little differently."""
    w = core()
    w.on_frame(frame(7, T0), uncertainty_ns=2 * MS)
    assert w.next_wakeup_ns() == T0 + 102 * MS  # widened: no brake because of a clock estimate
    w.on_decision(decision(7, T0 + 3 * MS), T0 + 50 * MS)  # 3 ms off: within 2 x 2 ms
    assert w.counters["decisions"] == 1 and w.next_wakeup_ns() is None
    w.on_frame(frame(8, T0 + 40 * MS), uncertainty_ns=2 * MS)
    w.on_decision(decision(8, T0 + 45 * MS), T0 + 60 * MS)  # 5 ms off: not that frame
    assert w.counters["untrusted_decisions"] == 1 and w.next_wakeup_ns() == T0 + 142 * MS


def test_a_decision_converted_on_another_host_is_trusted_within_both_conversions():
    """Watchdog on the capture host, decision node on another: the frame's capture time went there
    and back through two clock estimates, so the watchdog's own reading is exact (0) and the
    decision's conversion carries the uncertainty."""
    w = core()
    w.on_frame(frame(7, T0))
    w.on_decision(decision(7, T0 + 1 * MS), T0 + 50 * MS, uncertainty_ns=1 * MS)
    assert w.counters["decisions"] == 1 and w.counters["untrusted_decisions"] == 0
    w.on_frame(frame(8, T0 + 40 * MS))
    w.on_decision(decision(8, T0 + 40 * MS + 1 * MS), T0 + 60 * MS)  # same offset, but from this host: exact only
    assert w.counters["untrusted_decisions"] == 1


def test_a_late_decision_is_counted_after_the_failsafe():
    w = core()
    w.on_frame(frame(1, T0))
    assert len(w.tick(T0 + 100 * MS).decisions) == 1
    w.on_decision(decision(1, T0), T0 + 130 * MS)
    assert w.counters["late_decisions"] == 1 and w.counters["failsafes"] == 1


def test_a_silent_node_means_brake_now_and_repeatedly_until_it_is_back():
    w = core(failsafe_repeat_ms=100)
    assert w.tick(T0 + 300 * MS).decisions == []  # exactly at the timeout: still alive
    out = w.tick(T0 + 301 * MS)
    assert [(d.reason, d.action) for d in out.decisions] == [(Reason.NODE_DOWN, Action.BRAKE)]
    assert "detector silent 301 ms" in out.decisions[0].detail
    assert w.state == SystemState.FAILSAFE and w.status().nodes_down == ("detector",)
    assert w.tick(T0 + 350 * MS).decisions == []  # not every tick
    assert len(w.tick(T0 + 401 * MS).decisions) == 1  # but every repeat period
    w.on_heartbeat(beat("detector"), T0 + 420 * MS)
    assert w.tick(T0 + 430 * MS).decisions == [] and w.state == SystemState.NOMINAL
    assert w.counters["node_down_events"] == 1


def test_nodes_get_a_startup_grace_period():
    w = WatchdogCore(WatchdogRules(startup_grace_ms=2000, monitored_topics=[]), "watchdog", T0, ["detector"], PUBLISHERS)
    assert w.tick(T0 + 1900 * MS).decisions == []
    assert w.tick(T0 + 2001 * MS).decisions[0].reason == Reason.NODE_DOWN


def test_a_node_that_said_it_is_stopping_is_not_waited_for():
    w = core()
    w.on_heartbeat(beat("detector", NodeState.STOPPING), T0 + 10 * MS)
    assert w.tick(T0 + 5000 * MS).decisions == []


def test_a_node_that_failed_is_down_at_once_even_in_its_startup_grace_until_it_is_back():
    w = WatchdogCore(WatchdogRules(startup_grace_ms=10_000, monitored_topics=[]), "watchdog", T0, ["detector"], PUBLISHERS)
    w.on_heartbeat(beat("detector", NodeState.FAILED), T0 + 10 * MS)  # e.g. a corrupt model file
    out = w.tick(T0 + 11 * MS)
    assert [d.reason for d in out.decisions] == [Reason.NODE_DOWN] and "detector failed" in out.decisions[0].detail
    assert w.counters["node_down_events"] == 1 and w.status().nodes_down == ("detector",)
    w.on_heartbeat(beat("detector"), T0 + 500 * MS)  # the restarted detector
    assert w.tick(T0 + 510 * MS).decisions == [] and w.state == SystemState.NOMINAL


def test_a_forged_decision_from_the_far_future_is_untrusted_and_later_frames_still_fail_safe():
    w = core()
    w.on_frame(frame(1, T0))
    w.on_decision(decision(1, 2**62), T0 + 10 * MS)  # the frame's id, not its capture stamp
    w.on_decision(decision(99, T0), T0 + 10 * MS)  # a frame nobody captured
    assert w.counters["untrusted_decisions"] == 2 and w.counters["decisions"] == 0
    w.on_frame(frame(2, T0 + 40 * MS))
    w.on_heartbeat(beat("detector"), T0 + 100 * MS)
    assert [d.frame_id for d in w.tick(T0 + 140 * MS).decisions] == [1, 2]


def test_one_frame_with_a_distant_deadline_does_not_hold_back_the_others():
    w = core()
    w.on_frame(frame(1, T0 + 10**12))  # got past the subscriber's clock check somehow
    w.on_frame(frame(2, T0))
    assert [d.frame_id for d in w.tick(T0 + 100 * MS).decisions] == [2]


def test_slow_decisions_lower_the_depth_and_headroom_raises_it_again_with_hysteresis():
    w = core(window=5, relax_after=10, max_depth=2)
    controls = []
    t = T0
    for i in range(10):  # p95 at 90 ms of a 100 ms budget
        w.on_frame(frame(i, t))
        w.on_heartbeat(beat("detector"), t)
        controls += w.on_decision(decision(i, t), t + 90 * MS).controls
        t += 50 * MS
    assert [c.max_depth for c in controls] == [1, 0]  # one step per window, not one per frame
    assert w.state == SystemState.DEGRADED and controls[0].target == "detector" and "p95 90 ms" in controls[0].reason
    controls = []
    for i in range(10, 40):  # fast again
        w.on_frame(frame(i, t))
        w.on_heartbeat(beat("detector"), t)
        controls += w.on_decision(decision(i, t), t + 20 * MS).controls
        t += 50 * MS
    assert [c.max_depth for c in controls] == [1, 2]
    assert w.state == SystemState.NOMINAL


def test_in_between_latency_changes_nothing():
    w = core(window=5, relax_after=5)
    for i in range(30):
        assert w.on_decision(decision(i, T0 + i * MS), T0 + i * MS + 65 * MS).controls == []
    assert w.depth_limit == 1


def test_rules_are_validated():
    with pytest.raises(ValueError, match="relax_fraction < degrade_fraction"):
        WatchdogRules(relax_fraction=0.9, degrade_fraction=0.8)
