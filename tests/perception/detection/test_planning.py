"""Running a planned frame to its exit, on a scripted two-stage, two-exit network whose costs we control;
cost estimates per input size; the policy registry."""

import time

import numpy as np
import pytest

from perception.detection.network import LatencyEstimator
from perception.detection.planning import REGISTRY, run_to_exit
from perception.detection.policies import PolicyConfig
from perception.latency import now_ns
from scripted_network import MS, make_network


FRAME = np.zeros((416, 416, 3), np.uint8)


def test_a_fixed_exit_runs_exactly_that_exit_and_obeys_the_ceiling():
    network, engine = make_network()
    assert run_to_exit(network, network.begin(FRAME), 1, None, 1, 0) == 1 and engine.calls == ["stage0", "stage1", "exit1"]
    assert run_to_exit(network, network.begin(FRAME), -1, None, 0, 0) == 0  # -1 is the deepest the ceiling allows


@pytest.mark.parametrize("budget_ms, expected_exit", [(30, 1), (8, 0), (-5, 0)])
def test_without_an_exit_the_deepest_that_fits_the_deadline_runs(budget_ms, expected_exit):
    network, engine = make_network()
    assert run_to_exit(network, network.begin(FRAME), None, now_ns() + budget_ms * MS, 1, MS) == expected_exit
    assert ("exit0" in engine.calls) == (expected_exit == 0)  # the shallow head is skipped when not needed


def test_the_plan_is_made_again_after_a_stage_that_ran_slow():
    """Planned for full depth, but stage0 takes 15 ms instead of 2: stop at exit0, not past the deadline."""
    network, engine = make_network()

    def stage0_on_a_busy_cpu():
        time.sleep(0.015)
        return np.zeros(1, np.float32)

    engine.outputs["stage0"]["f0"] = stage0_on_a_busy_cpu  # the session holds this dict
    assert run_to_exit(network, network.begin(FRAME), None, now_ns() + 20 * MS, 1, MS) == 0
    assert engine.calls == ["stage0", "exit0"]


def test_a_frame_with_time_to_spare_runs_the_direct_graph_and_one_near_its_deadline_runs_part_by_part():
    """The direct graph commits the frame to full depth: taken while three times its cost fits, and
    always without a deadline; nearer the deadline the parts run, which can stop after a slow stage."""
    network, engine = make_network(direct_ms=12)
    assert network.frame_cost_ns((416, 416), 1) == 12 * MS and network.frame_cost_ns((416, 416), 0) == 3 * MS
    assert network.frame_cost_ns((416, 416), 1, now_ns() + 25 * MS, MS) == 13 * MS  # 3 x 12 ms does not fit: the parts
    assert run_to_exit(network, network.begin(FRAME), None, None, 1, MS) == 1 and engine.calls == ["exit1.direct"]
    engine.calls.clear()
    assert run_to_exit(network, network.begin(FRAME), None, now_ns() + 80 * MS, 1, MS) == 1
    assert engine.calls == ["exit1.direct"]
    engine.calls.clear()
    assert run_to_exit(network, network.begin(FRAME), None, now_ns() + 25 * MS, 1, MS) == 1  # 3 x its cost does not fit
    assert engine.calls == ["stage0", "stage1", "exit1"]
    engine.calls.clear()
    assert run_to_exit(network, network.begin(FRAME), None, None, 0, MS) == 0 and engine.calls == ["stage0", "exit0"]


def test_a_parts_first_run_at_a_size_is_not_a_cost_and_a_direct_graph_is_never_dearer_than_its_parts():
    network, engine = make_network(direct_ms=200)  # one slow run: believed, it would keep the graph out for good
    assert network.frame_cost_ns((416, 416), 1) == 13 * MS  # the parts' 2 + 8 + 3
    assert network.runs_direct((416, 416), 1, now_ns() + 60 * MS, MS)

    def stage0_slow():
        time.sleep(0.02)
        return np.zeros(1, np.float32)

    engine.outputs["stage0"]["f0"] = stage0_slow
    run_to_exit(network, network.begin(FRAME), 0, None, 0, 0)  # the first run at 416x416 (20 ms): allocating
    assert network.estimator.estimate_ns("stage0", (416, 416)) == 2 * MS
    run_to_exit(network, network.begin(FRAME), 0, None, 0, 0)
    assert network.estimator.estimate_ns("stage0", (416, 416)) > 10 * MS  # the second counts


def test_a_direct_graph_kept_out_by_its_own_stale_estimate_is_tried_again_where_its_parts_would_fit():
    """Settled on 8+ slow runs (a loaded spell), its estimate no longer fits 3 times; the parts, measured
    since on a quiet machine, do: one frame in 8 runs it again and its estimate can come down."""
    network, engine = make_network(direct_ms=40)
    for _ in range(10):
        network.estimator.add("exit1.direct", (416, 416), 40 * MS)
    for _ in range(16):
        run_to_exit(network, network.begin(FRAME), None, now_ns() + 80 * MS, 1, MS)  # 3 x 40 > 80, 3 x 13 < 80
    assert engine.calls.count("exit1.direct") == 2 and engine.calls.count("stage0") == 14
    engine.calls.clear()
    for _ in range(8):  # a deadline the parts do not fit 3 times either (nor once): never tried
        run_to_exit(network, network.begin(FRAME), None, now_ns() + MS, 1, MS)
    assert "exit1.direct" not in engine.calls


def test_cost_is_estimated_per_input_size_and_a_size_not_run_yet_in_proportion_to_pixels():
    estimator = LatencyEstimator()
    estimator.add("stage0", (416, 416), 10 * MS)
    estimator.add("stage0", (208, 208), 3 * MS)
    assert estimator.estimate_ns("stage0", (208, 208)) == 3 * MS
    assert estimator.estimate_ns("stage0", (416, 208)) == 5 * MS  # from the most run size, by pixels
    assert estimator.estimate_ns("exit0", (416, 416)) == 0  # never run anywhere


def test_the_policy_kinds_are_a_registry_and_an_unknown_one_is_named():
    assert {"fixed", "interval", "deadline", "adaptive"} <= set(REGISTRY)
    with pytest.raises(ValueError, match="kind must be one of adaptive, deadline, fixed, interval, got 'confidence'"):
        PolicyConfig(kind="confidence")
