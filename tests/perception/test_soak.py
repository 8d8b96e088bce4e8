"""`perception soak`: the invariant checker on exact message streams, the launch as the soak runs it,
and soaks of real pipelines: the shipped one with faults (no violation), and one whose watchdog
was given a looser budget than its launch promises (caught).

The 1-minute soak is the CI run of the issue-16 soak; the 30-minute one is a benchmark
(docs/RELIABILITY.md, "Soak"). Its fail-safe allowance is wide (250 ms) so a loaded 2-core
machine cannot fail it: what it asserts is that no frame is ever left without an answer, no node
stays down or exits unprovoked, and nothing leaks; the watchdog's precision is bench-watchdog's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import EDGES, READY, REPO
from perception.config import ConfigError
from perception.launch import load_launch_file
from perception.messages import Action, Decision, FrameHeader, FrameTransport, Heartbeat, NodeState, Reason, Stamp
from perception.soak.command import SOAK_MAX_RESTARTS, prepare
from perception.soak.faults import ROGUE
from perception.soak.faults import DEFAULT_FAULTS
from perception.soak.invariants import InvariantChecker
from perception.soak.resources import Limits, Sample, judge_growth

MS = 1_000_000
S = 1_000_000_000
BUDGET = 100 * MS
ALLOWANCE = 50 * MS
T0 = 1_000 * S


def frame(frame_id: int, at_ns: int) -> FrameHeader:
    return FrameHeader(frame_id=frame_id, capture_ns=at_ns, media_ns=0, width=8, height=8, channels=3,
                       transport=FrameTransport.INLINE)


def decision(frame_id: int, capture_ns: int, stamp_ns: int) -> Decision:
    return Decision(frame_id=frame_id, capture_ns=capture_ns, stamps=(Stamp("decision", stamp_ns),),
                    action=Action.PROCEED, reason=Reason.CLEAR, decided_by="decision")


def brake(frame_id: int, capture_ns: int, stamp_ns: int, reason: Reason = Reason.DEADLINE_MISS) -> Decision:
    return Decision(frame_id=frame_id, capture_ns=capture_ns, stamps=(Stamp("watchdog", stamp_ns),),
                    action=Action.BRAKE, reason=reason, decided_by="watchdog")


def beat(node: str, sent_ns: int, pid: int = 100, state: NodeState = NodeState.OK) -> Heartbeat:
    return Heartbeat(frame_id=0, capture_ns=0, node=node, pid=pid, seq=1, sent_ns=sent_ns, state=state)


def checker(bounds_s: float = 10.0) -> InvariantChecker:
    check = InvariantChecker(BUDGET, ALLOWANCE, "watchdog", 300 * MS,
                             {n: int(bounds_s * S) for n in ("capture", "watchdog")})
    check.start(T0)
    return check


def watchdog_beats(check: InvariantChecker, start_ns: int, end_ns: int, pid: int = 100) -> None:
    for t in range(start_ns, end_ns, 50 * MS):
        check.on_heartbeat(beat("watchdog", t, pid))
        check.on_heartbeat(beat("capture", t))


def test_a_frame_answered_in_time_by_a_decision_about_it_or_a_newer_frame_or_a_brake_is_no_violation():
    check = checker()
    watchdog_beats(check, T0 - S, T0 + 3 * S)
    a, b, c = T0 + 100 * MS, T0 + 140 * MS, T0 + 500 * MS
    for i, t in enumerate((a, b, c), 1):
        check.on_frame(frame(i, t))
    check.on_decision(decision(2, b, b + 90 * MS))  # answers frames 1 and 2
    check.on_decision(brake(3, c, c + BUDGET + 40 * MS))  # the watchdog 40 ms late: within the allowance
    assert check.judge(T0 + 4 * S) == []
    assert (check.tally.frames, check.tally.by_decision, check.tally.by_failsafe) == (3, 2, 1)
    assert check.tally.worst_ns == 40 * MS


def test_an_unanswered_or_late_frame_while_the_watchdog_is_up_is_a_violation_judged_by_stamps_not_arrival():
    check = checker()
    watchdog_beats(check, T0 - S, T0 + 3 * S)
    late, never = T0 + 100 * MS, T0 + 900 * MS
    check.on_frame(frame(1, late))
    check.on_frame(frame(2, never))
    # Stamped by the watchdog 60 ms past the allowance: late, however soon it reached us.
    check.on_decision(brake(1, late, late + BUDGET + ALLOWANCE + 60 * MS))
    found = check.judge(T0 + 4 * S)
    assert [(v.invariant, v.t_ns) for v in found] == [("answered", late), ("answered", never)]
    assert "DEADLINE_MISS brake stamped 210.0 ms after capture" in found[0].detail
    assert "first answered by nothing" in found[1].detail


def test_answers_about_frames_capture_never_sent_answer_nothing():
    """A decision about a forged frame, or a DEADLINE_MISS for one (a rogue frame the watchdog saw),
    must not count for a real frame: the watchdog's own trust rule. A NODE_DOWN brake does."""
    check = checker()
    watchdog_beats(check, T0 - S, T0 + 3 * S)
    real, other = T0 + 100 * MS, T0 + 600 * MS
    check.on_frame(frame(7, real))
    check.on_frame(frame(8, other))
    check.on_decision(decision(10**9, real + 5 * MS, real + 20 * MS))  # about a frame nobody captured
    check.on_decision(decision(7, real + 1, real + 20 * MS))  # a real frame's id with another capture stamp
    check.on_decision(brake(10**9 + 1, real + 5 * MS, real + 30 * MS))  # DEADLINE_MISS of a rogue frame
    check.on_decision(brake(7, real, other + 50 * MS, Reason.NODE_DOWN))
    found = check.judge(T0 + 4 * S)
    assert [v.detail.split(":")[0] for v in found] == ["frame 7"]
    assert check.tally.by_failsafe == 1
    check.finish(T0 + 4 * S)
    assert check.tally.untrusted == 2


def test_a_frame_the_watchdog_was_down_for_is_left_to_the_vehicle_interface_not_a_violation():
    check = checker()
    watchdog_beats(check, T0 - S, T0 + 200 * MS)  # killed
    watchdog_beats(check, T0 + 2 * S, T0 + 4 * S, pid=101)  # its restart
    during, settling, after = T0 + 150 * MS, T0 + 2 * S + 50 * MS, T0 + 3 * S
    for i, t in enumerate((during, settling, after), 1):
        check.on_frame(frame(i, t))
    found = check.judge(T0 + 6 * S)
    assert check.tally.left_to_interface == [(1, during), (2, settling)]  # its subscriptions had not settled
    assert [v.detail.split(":")[0] for v in found] == ["frame 3"]


def test_a_watchdog_silent_longer_than_its_limit_is_not_up_though_the_same_process():
    check = checker()
    watchdog_beats(check, T0 - S, T0 + 200 * MS)
    watchdog_beats(check, T0 + 700 * MS, T0 + 3 * S)  # SIGSTOP for 500 ms, then SIGCONT: the same pid
    check.on_frame(frame(1, T0 + 250 * MS))
    assert check.judge(T0 + 5 * S) == []
    assert check.tally.left_to_interface == [(1, T0 + 250 * MS)]


def test_a_node_silent_beyond_its_bound_is_a_violation_and_recovery_after_a_fault_is_timed():
    check = checker(bounds_s=3.0)
    check.on_heartbeat(beat("capture", T0, pid=5))
    check.expect_recovery("kill", "capture", 5, T0 + 10 * MS, T0 + 10 * MS, new_pid=True)
    check.on_heartbeat(beat("capture", T0 + 40 * MS, pid=5))  # its last words before dying: not back
    check.on_heartbeat(beat("capture", T0 + 1500 * MS, pid=6))
    assert check.tally.recoveries == {"kill": [1490 * MS]} and check.recovering() == set()
    assert check.judge(T0 + 4 * S) == []
    found = check.judge(T0 + 1500 * MS + 3 * S + check.lag_ns + 1)  # no heartbeat since: down past its bound
    assert [v.invariant for v in found] == ["recovered"] and "capture sent no heartbeat" in found[0].detail
    check.on_heartbeat(beat("capture", T0 + 9 * S, pid=7))
    assert check.judge(T0 + 12 * S) == []  # the same silence is reported once


def test_a_fault_whose_node_never_came_back_is_a_violation_at_the_end():
    check = checker()
    check.expect_recovery("stop>hang", "capture", 5, T0, T0, new_pid=True)
    check.on_heartbeat(beat("capture", T0 + S, pid=5))  # the stopped process itself: not a recovery
    check.stop(T0 + 2 * S)
    assert [v.invariant for v in check.finish(T0 + 2 * S)] == ["recovered"]


def test_the_checker_forgets_what_can_no_longer_answer_so_memory_stays_flat():
    check = checker()
    for i in range(1, 3000):  # two minutes at 25 Hz
        t = T0 + i * 40 * MS
        check.on_frame(frame(i, t))
        check.on_decision(decision(i, t, t + 30 * MS))
        check.on_heartbeat(beat("watchdog", t))
        check.on_heartbeat(beat("capture", t))
        if i % 25 == 0:
            assert check.judge(t) == []
    assert check.tally.frames > 2800
    assert len(check._decisions) < 300 and len(check._frames) < 100 and len(check._spans) == 1


def test_resource_growth_beyond_its_limits_is_named():
    first = Sample(0, 300 << 20, 140, 1, 0, True)
    assert judge_growth(first, Sample(1, 350 << 20, 145, 1, 0, True), Limits(100, 8, 0)) == []
    problems = judge_growth(first, Sample(1, 450 << 20, 160, 3, 0, True), Limits(100, 8, 0))
    assert [p.split(" grew")[0] for p in problems] == ["node memory", "open file descriptors", "shared-memory segments"]


def test_the_soak_loops_the_source_adds_the_rogue_to_message_inputs_and_lets_nodes_restart():
    spec, roles, topics = prepare(load_launch_file(REPO / "launch/replay.yaml"), "replay.yaml", set(DEFAULT_FAULTS))
    nodes = {n.name: n for n in spec.nodes}
    assert nodes["capture"].params["source.loop"] is True and nodes["capture"].params["max_frames"] is None
    assert nodes["detector"].inputs == {"frames": ["capture/frames", f"{ROGUE}/frames"], "control": "watchdog/control"}
    assert nodes["decision"].inputs == {"detections": ["detector/detections", f"{ROGUE}/detections"]}
    assert nodes["watchdog"].inputs["decisions"] == ["decision/decisions", f"{ROGUE}/decisions"]
    assert nodes["watchdog"].inputs["heartbeats"] == ["capture/heartbeat", "detector/heartbeat", "decision/heartbeat"]
    assert spec.external == {ROGUE: ["frames", "detections", "decisions"]}
    assert all(n.max_restarts == SOAK_MAX_RESTARTS for n in spec.nodes)
    assert (roles.watchdog, roles.captures, roles.deciders, roles.budget_ms) == ("watchdog", ["capture"], ["decision"], 100.0)
    assert {t.name for t in topics} == {"/frames", "/detections", "/decisions"}
    unchanged, _, none = prepare(load_launch_file(REPO / "launch/replay.yaml"), "replay.yaml", {"kill"})
    assert none == []  # no message faults: the launch's inputs are left as they are
    assert [n.inputs for n in unchanged.nodes] == [n.inputs for n in load_launch_file(REPO / "launch/replay.yaml").nodes]


def test_a_launch_the_soak_cannot_judge_is_one_line(tmp_path):
    launch = load_launch_file(REPO / "launch/replay.yaml")
    without = launch.__class__(nodes=[n for n in launch.nodes if n.name not in ("watchdog", "decision")])  # a launch that decides needs one anyway
    with pytest.raises(ConfigError, match="needs exactly one node with node: watchdog, found 0"):
        prepare(without, "x.yaml", {"kill"})
    with pytest.raises(ConfigError, match="a soak runs a launch on one machine"):
        prepare(load_launch_file(REPO / "launch/two_hosts.yaml"), "two_hosts.yaml", {"kill"})
    result = subprocess.run([sys.executable, "-m", "perception.cli", "soak", "launch/replay.yaml", "--faults", "kill,melt"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "perception soak: --faults: melt: the kinds are kill, stop, term, garbage, forged, load")


def run_soak(args: list[str], json_path: Path, timeout_s: float) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run([sys.executable, "-m", "perception.cli", "soak", *args, "--json", str(json_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    assert json_path.exists(), result.stderr[-3000:]
    return result, json.loads(json_path.read_text())


@pytest.mark.timeout(300)
def test_a_one_minute_soak_of_the_shipped_pipeline_with_faults_has_no_violation(tmp_path):
    result, report = run_soak(["launch/replay.yaml", "--minutes", "1", "--every", "2.5", "--seed", "16",
                               "--failsafe-delay-ms", "250"], tmp_path / "soak.json", 240)
    assert report["violations"]["total"] == 0, result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["duration_s"] >= 60 and report["frames"] >= 600  # 25 Hz, less what faults cost
    assert report["decisions"] >= report["frames"] / 3 and report["answered_by_decision"] >= report["frames"] / 3
    faults = report["faults"]
    assert sum(faults.values()) >= 8 and sum(faults.get(k, 0) for k in ("kill", "stop", "term")) >= 2
    assert sum(faults.get(k, 0) for k in ("garbage", "forged")) >= 2
    assert sum(r["count"] for r in report["recovery_s"].values()) >= 2  # every node hit came back, and was timed
    assert sum(report["dropped_by_nodes"].values()) >= 1  # the rogue's messages reached the nodes and were dropped
    resources = report["resources"]
    assert resources["rss_mb"]["first"] > 100 and resources["fds"]["last"] is not None
    assert resources["shm_segments"]["last"] == resources["shm_segments"]["first"] == 1  # killed captures' rings swept
    assert "violations: 0" in result.stdout


@pytest.mark.timeout(240)
def test_a_watchdog_looser_than_the_budget_the_soak_holds_it_to_is_caught(tmp_path):
    """The vehicle needs 100 ms; the launch was configured for 3 s, so a stalled node's frames go
    unanswered past 100 ms: the soak must say so and fail."""
    (tmp_path / "capture.yaml").write_text("source: {kind: synthetic, width: 320, height: 240, fps: 10}\nrate: 10\n"
                                           "wait_for_subscribers: 2\n")
    (tmp_path / "detector.yaml").write_text(f"model: {REPO / 'perception/weights/yolox_nano_exits.json'}\n"
                                            "engine: {threads: 1}\npolicy: {kind: fixed, exit: 0}\n")
    (tmp_path / "decision.yaml").write_text("{}\n")
    (tmp_path / "watchdog.yaml").write_text(  # no TOPIC_DOWN brakes to cover for it
        "rules: {monitored_topics: [], heartbeat_timeout_ms: 3000}\n")
    launch = tmp_path / "loose.yaml"
    launch.write_text("budget_ms: 3000\nnodes:\n" + "".join(f"  - {{name: {n}, node: {n}, config: {n}.yaml, restart_delay_s: 0.2, "
                                            f"{READY if n == 'capture' else ''}{EDGES[n]}}}\n"
                                            for n in ("capture", "detector", "decision", "watchdog")))
    result, report = run_soak([str(launch), "--budget-ms", "100", "--seconds", "30", "--faults", "stop", "--every", "2", "--seed", "1",
                               "--targets", "detector,decision"], tmp_path / "soak.json", 200)
    assert result.returncode == 1
    assert report["violations"]["answered"] >= 3, result.stdout  # a stop of 0.2 s or more leaves 2 frames or more
    assert report["violation_list"][0]["detail"].startswith("frame ")
