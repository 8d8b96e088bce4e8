"""The adaptive policy's plans, on frames described by hand (perception.detection.planning.FrameContext)
over a scripted network whose costs are known: no timing, no video."""

from dataclasses import replace

import numpy as np
import pytest

from perception.detection.adaptive import AdaptiveConfig
from perception.detection.planning import FrameContext, Plan
from perception.detection.policies import PolicyConfig, make_policy
from perception.detection.risk import NO_RISK, Risk
from perception.latency import now_ns
from perception.tracking.flow import FlowResult
from perception.tracking.tracker import Track
from scripted_network import MS, make_network

FULL = 416 * 416


def policy(kind: str = "adaptive", sizes=(1.0, 0.5), **settings):
    return make_policy(PolicyConfig(kind=kind, sizes=list(sizes), adaptive=replace(AdaptiveConfig(), **settings)), FULL)


def person(height: float, track_id: int = 1, hits: int = 10) -> Track:
    return Track(track_id=track_id, box=np.array([300, 100, 340, 100 + height], np.float32), score=0.9, class_id=0,
                 age_frames=10, hits=hits, frames_since_update=0, velocity=np.zeros(2), height_rate=0.0, confirmed=True)


def frame(network, *, since_ms: float | None = 40.0, since_full_ms: float | None = 40.0, tracks=(), risk=NO_RISK,
          deadline_ns: int | None = None, change: float = 0.0, flow_ok: bool = True) -> FrameContext:
    boxes = np.array([t.box for t in tracks], np.float32).reshape(-1, 4)
    moved = FlowResult(boxes=boxes, ok=np.full(len(boxes), flow_ok), fb_error=np.zeros(len(boxes), np.float32),
                       good_fraction=np.ones(len(boxes), np.float32), scale=np.ones(len(boxes), np.float32))
    return FrameContext(t_ns=10**9, width=640, height=480, deadline_ns=deadline_ns, max_exit=1, network=network,
                        tracks=list(tracks), risk=risk, carried_track_ids=np.array([t.track_id for t in tracks], np.uint32),
                        frames_since_network=None if since_ms is None else 1, ms_since_network=since_ms,
                        ms_since_full_size=since_full_ms, moved=lambda: moved, change=lambda enough: change)


@pytest.fixture
def network():
    return make_network(fit_aspect=True)[0]


def test_a_quiet_frame_is_propagated_and_time_change_or_lost_flow_run_the_network(network):
    adaptive = policy(max_gap_ms=100)
    tall = [person(200)]
    assert adaptive.plan(frame(network, tracks=tall)).propagate
    assert adaptive.plan(frame(network, since_ms=120, tracks=tall)).why.startswith("time")
    assert adaptive.plan(frame(network, tracks=tall, change=0.05)).why == "change"
    assert adaptive.plan(frame(network, tracks=tall, flow_ok=False)).why.startswith("flow lost")
    assert adaptive.plan(frame(network, since_ms=None)).why == "first frame"


def test_risk_runs_full_size_as_deep_as_the_deadline_allows_even_when_full_size_is_late(network):
    plan = policy().plan(frame(network, risk=Risk("car in path, closing", True), deadline_ns=now_ns() + 5 * MS))
    assert plan.why.startswith("risk:") and plan.pixels == FULL and plan.exit_index is None


def test_a_network_frame_runs_at_the_smallest_size_that_keeps_every_track_tall_enough(network):
    adaptive = policy(sizes=[1.0, 0.5, 0.25], min_object_px=16, max_gap_ms=0)
    # 640x480 at a quarter of 416x416's pixels: scale 0.35, a 60 px person 21 px tall; at half 0.5, 30 px
    assert adaptive.plan(frame(network, tracks=[person(60)])).pixels == FULL // 4
    assert adaptive.plan(frame(network, tracks=[person(40)])).pixels == FULL // 2
    assert adaptive.plan(frame(network, tracks=[person(20)])).pixels == FULL
    # a scout at full size at least every full_size_every_ms, and none below full size with anything in the path
    assert adaptive.plan(frame(network, tracks=[person(60)], since_full_ms=2000)).pixels == FULL
    assert adaptive.plan(frame(network, tracks=[person(60)], risk=Risk(None, True))).pixels == FULL


def test_under_a_deadline_too_close_for_full_size_a_smaller_size_before_a_shallower_exit(network):
    adaptive = policy(sizes=[1.0, 0.5], max_gap_ms=0)
    # full depth costs about 13 ms at full size and 6.5 at half, with the 2 ms margin: a deadline 14 ms away
    # takes half size (5.5 ms to spare for a busy machine; full size can never fit it, time only goes on)
    plan = adaptive.plan(frame(network, tracks=[person(20)], deadline_ns=now_ns() + 14 * MS))
    assert plan.pixels == FULL // 2 and plan.exit_index is None
    assert adaptive.plan(frame(network, tracks=[person(20)], deadline_ns=now_ns() + 60 * MS)).pixels == FULL


def test_the_full_size_is_the_largest_share_whatever_it_is(network):
    adaptive = policy(sizes=[0.8, 0.4], max_gap_ms=0, min_object_px=1)
    assert adaptive.budgets() == (int(FULL * 0.8), int(FULL * 0.4))
    assert adaptive.plan(frame(network, tracks=[person(200)])).pixels == int(FULL * 0.4)
    assert adaptive.plan(frame(network, since_ms=None)).pixels == int(FULL * 0.8)


def test_the_default_deadline_policy_gives_way_in_size_before_depth(network):
    """Full size while the deadline can take it at full depth; a smaller size when it cannot; the
    smallest, its exit chosen as the frame runs, when none fits (full size ran exit 0 late more
    often, and scored lower on three sequences of four: docs/BENCHMARKS.md)."""
    deadline = policy(kind="deadline", sizes=[1.0, 0.5, 0.25])
    assert deadline.budgets() == (FULL, FULL // 2, FULL // 4)  # all warmed up: plans need their costs
    # full depth costs about 13 ms at full size, 6.5 at half and 3.3 at a quarter (scripted_network)
    assert deadline.plan(frame(network, deadline_ns=None)).pixels == FULL  # replay, evaluation: no deadline
    assert deadline.plan(frame(network, deadline_ns=now_ns() + 60 * MS)) == Plan("every frame", pixels=FULL)
    late = deadline.plan(frame(network, deadline_ns=now_ns() + 14 * MS))
    assert late.pixels == FULL // 2 and late.exit_index is None and "0.5 size" in late.why
    hopeless = deadline.plan(frame(network, deadline_ns=now_ns() + 1 * MS))
    assert hopeless.pixels == FULL // 4 and hopeless.exit_index is None


def test_when_no_size_fits_the_deadline_the_adaptive_policy_keeps_the_size_its_objects_need(network):
    """The size its objects need, its exit chosen as the frame runs (the deadline policy takes the
    smallest there: measured for it, not for this one); full size for anything in the ego path."""
    adaptive = policy(sizes=[1.0, 0.5, 0.25], min_object_px=16, max_gap_ms=0)
    hopeless = now_ns() + 1 * MS
    assert adaptive.plan(frame(network, tracks=[person(40)], deadline_ns=hopeless)).pixels == FULL // 2
    assert adaptive.plan(frame(network, tracks=[person(20)], deadline_ns=hopeless)).pixels == FULL
    in_path = adaptive.plan(frame(network, tracks=[person(60)], deadline_ns=hopeless, risk=Risk(None, True)))
    assert in_path.pixels == FULL and in_path.max_exit is None
    late = adaptive.plan(frame(network, tracks=[person(60)], deadline_ns=now_ns() + 10 * MS, risk=Risk(None, True)))
    assert late.pixels == FULL  # nothing relevant in the path runs below full size, whatever the deadline


def expensive_first_exit(network) -> None:
    """Costs in the ratio the real network's have: exit 0 at full size (14 ms) costs more than full
    depth at half of it (10 ms), as on the 2-core VM (docs/BENCHMARKS.md)."""
    for part, cost in {"stage0": 9, "exit0": 5}.items():
        for _ in range(30):
            network.estimator.add(part, (416, 416), cost * MS)


def test_the_watchdogs_depth_ceiling_is_spent_on_a_smaller_input_at_full_depth_when_that_costs_no_more(network):
    """The watchdog lowers the ceiling to spend less; exit 0 at full size is both dearer and (away
    from PETS09) far less accurate than full depth at half the pixels, so the frame runs that."""
    cheap_exit = policy(kind="deadline").plan(replace(frame(network), max_exit=0))
    assert cheap_exit.pixels == FULL and cheap_exit.max_exit is None  # exit 0 (3 ms) is cheaper: the ceiling as it is
    expensive_first_exit(network)
    plan = policy(kind="deadline").plan(replace(frame(network), max_exit=0))
    assert plan.pixels == FULL // 2 and plan.max_exit == 1 and plan.why == "every frame, 0.5 size (depth ceiling)"
    adaptive = policy(max_gap_ms=0).plan(replace(frame(network, tracks=[person(20)]), max_exit=0))
    assert adaptive.pixels == FULL // 2 and adaptive.max_exit == 1
    # a frame the adaptive policy already made small is held to its own size's exit 0, not made dearer
    small = policy(max_gap_ms=0).plan(replace(frame(network, tracks=[person(40)]), max_exit=0))
    assert small.pixels == FULL // 2 and small.max_exit is None
    # anything relevant in the ego path: full size, the watchdog's ceiling as it is
    in_path = policy(max_gap_ms=0).plan(replace(frame(network, tracks=[person(20)], risk=Risk(None, True)), max_exit=0))
    assert in_path.pixels == FULL and in_path.max_exit is None
    # a deadline too close even for that: the ceiling's exit at the largest size that fits, as before
    late = policy(kind="deadline").plan(replace(frame(network, deadline_ns=now_ns() + 8 * MS), max_exit=0))
    assert late.max_exit is None
    # no ceiling: nothing changes
    assert policy(kind="deadline").plan(frame(network)) == Plan("every frame", pixels=FULL)


def test_a_size_is_planned_by_what_the_frame_will_run_a_direct_graph_only_where_it_may():
    """A direct graph runs only while three times its cost fits the deadline; closer in, the frame runs
    the dearer parts. Planned by the direct graph's cost it kept full size, then ran out of time after
    stage 0 and ended at exit 0: it must get the size at which what it will run fits."""
    from perception.detection.planning import run_to_exit

    network, engine = make_network(fit_aspect=True, direct_ms=20)
    for _ in range(30):
        network.estimator.add("stage0", (416, 416), 50 * MS)  # the parts: 61 ms at 416x416, the direct graph 20
        network.estimator.add("exit1.direct", (416, 416), 20 * MS)
    # At 480x352 the direct graph (20 ms) would fit 50 ms once, not three times; the parts not at all.
    # At 320x256 three times its 9.5 ms fit with 18 ms to spare (for this test's own steps on a busy machine).
    deadline_ns = now_ns() + 50 * MS
    plan = policy(kind="deadline").plan(frame(network, deadline_ns=deadline_ns))
    assert plan.pixels == FULL // 2
    inference = network.begin(np.zeros((480, 640, 3), np.uint8), plan.pixels)
    assert run_to_exit(network, inference, plan.exit_index, deadline_ns, 1, 2 * MS) == 1
    assert engine.calls == ["exit1.direct"]


def test_one_frame_in_eight_that_could_run_the_direct_graph_runs_the_parts_to_keep_their_estimates():
    from perception.detection.planning import run_to_exit

    network, engine = make_network(fit_aspect=True, direct_ms=10)
    image = np.zeros((480, 640, 3), np.uint8)
    for _ in range(16):
        run_to_exit(network, network.begin(image), None, now_ns() + 10_000 * MS, 1, 2 * MS)
    assert engine.calls.count("exit1.direct") == 14 and engine.calls.count("stage0") == 2
    engine.calls.clear()
    for _ in range(16):  # without a deadline (replay, evaluation) always the one graph
        run_to_exit(network, network.begin(image), None, None, 1, 2 * MS)
    assert engine.calls == ["exit1.direct"] * 16


def test_the_detector_runs_full_depth_at_the_size_its_policy_chose_under_the_ceiling():
    from perception.detection.frames import FrameDetector
    from perception.tracking.flow import FlowConfig
    from perception.tracking.tracker import TrackerConfig

    network, engine = make_network(fit_aspect=True)
    expensive_first_exit(network)
    engine.outputs["exit1"]["e1"] = np.zeros((1, 1680, 85), np.float32)  # the anchors of 320x256, half of 416x416
    detector = FrameDetector(network, policy(kind="deadline"), TrackerConfig(), FlowConfig(), 0.3, 2.0, None)
    outcome = detector.process(np.zeros((480, 640, 3), np.uint8), 0, None, max_exit=0)
    assert outcome.level == 1 and outcome.input_size == (320, 256)
    assert engine.calls == ["stage0", "stage1", "exit1"]
