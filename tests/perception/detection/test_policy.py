"""Depth policies on a scripted two-stage, two-exit detector whose outputs and costs we control."""

import time
from pathlib import Path

import numpy as np
import pytest

from perception.detection.adaptive import AdaptiveDetector
from perception.detection.manifest import ExitSpec, InputSpec, Manifest, StageSpec
from perception.detection.policy import PolicyConfig, run_policy
from perception.engines.base import Engine, Session
from perception.latency import now_ns

MS = 1_000_000


def raw_with_scores(*scores: float) -> np.ndarray:
    raw = np.zeros((1, 3549, 85), np.float32)
    for i, score in enumerate(scores):
        anchor = 52 * 4 * i + 8 * i  # well separated cells: no NMS interaction
        raw[0, anchor, :4] = [0.5, 0.5, 1.0, 1.0]
        raw[0, anchor, 4] = 1.0
        raw[0, anchor, 5] = score
    return raw


class ScriptedSession(Session):
    def __init__(self, name: str, inputs: tuple[str, ...], outputs: dict, calls: list) -> None:
        self.name, self.outputs, self.calls = name, outputs, calls
        self.input_names, self.output_names = inputs, tuple(outputs)

    def run(self, feeds):
        self.calls.append(self.name)
        return {k: v() if callable(v) else v for k, v in self.outputs.items()}


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(self, exit0_raw: np.ndarray) -> None:
        self.calls: list[str] = []
        self.outputs = {
            "stage0": {"f0": np.zeros(1, np.float32)},
            "stage1": {"f1": np.zeros(1, np.float32)},
            "exit0": {"e0": lambda: self.exit0_raw},
            "exit1": {"e1": raw_with_scores(0.9)},
        }
        self.inputs = {"stage0": ("images",), "stage1": ("f0",), "exit0": ("f0",), "exit1": ("f1",)}
        self.exit0_raw = exit0_raw

    @classmethod
    def unavailable_reason(cls, config):
        return None

    def open(self, onnx_path, part_name, dimensions=None):
        return ScriptedSession(part_name, self.inputs[part_name], self.outputs[part_name], self.calls)


def make_detector(exit0_raw=None) -> tuple[AdaptiveDetector, ScriptedEngine]:
    manifest = Manifest(
        name="scripted", input=InputSpec("images", 416, 416), num_classes=80, strides=[8, 16, 32],
        stages=[StageSpec("stage0", Path("s0"), ["images"], ["f0"]), StageSpec("stage1", Path("s1"), ["f0"], ["f1"])],
        exits=[ExitSpec("exit0", 0, Path("e0"), ["f0"], "e0"), ExitSpec("exit1", 1, Path("e1"), ["f1"], "e1")],
    )
    engine = ScriptedEngine(raw_with_scores(0.9) if exit0_raw is None else exit0_raw)
    detector = AdaptiveDetector(manifest, engine)
    for part, cost in {"stage0": 2, "exit0": 1, "stage1": 8, "exit1": 3}.items():
        detector.estimator.add(part, cost * MS)
    return detector, engine


FRAME = np.zeros((416, 416, 3), np.uint8)


def test_fixed_depth_runs_exactly_the_requested_exit_and_obeys_the_ceiling():
    detector, engine = make_detector()
    outcome = run_policy(detector, detector.begin(FRAME), PolicyConfig(kind="fixed", exit=1))
    assert outcome.exit_index == 1 and engine.calls == ["stage0", "stage1", "exit1"]
    assert run_policy(detector, detector.begin(FRAME), PolicyConfig(kind="fixed"), max_exit=0).exit_index == 0


def test_confidence_stops_at_a_sure_shallow_exit():
    detector, engine = make_detector(raw_with_scores(0.95, 0.02))
    outcome = run_policy(detector, detector.begin(FRAME), PolicyConfig(kind="confidence"))
    assert outcome.exit_index == 0 and engine.calls == ["stage0", "exit0"]
    assert len(outcome.boxes) == 1 and outcome.scores[0] == pytest.approx(0.95)


def test_confidence_goes_deeper_when_unsure_reusing_the_shallow_features():
    detector, engine = make_detector(raw_with_scores(0.95, 0.3))
    outcome = run_policy(detector, detector.begin(FRAME), PolicyConfig(kind="confidence"))
    assert outcome.exit_index == 1 and outcome.exits_evaluated == (0, 1)
    assert engine.calls == ["stage0", "exit0", "stage1", "exit1"]  # stage0 ran once


def test_confidence_stays_shallow_when_going_deeper_would_miss_the_deadline():
    detector, _ = make_detector(raw_with_scores(0.3))
    inference = detector.begin(FRAME)
    outcome = run_policy(detector, inference, PolicyConfig(kind="confidence"), deadline_ns=now_ns() + 5 * MS)
    assert outcome.exit_index == 0


def test_confidence_obeys_the_watchdog_ceiling():
    detector, _ = make_detector(raw_with_scores(0.3))
    assert run_policy(detector, detector.begin(FRAME), PolicyConfig(kind="confidence"), max_exit=0).exit_index == 0


@pytest.mark.parametrize("budget_ms, expected_exit", [(30, 1), (8, 0), (-5, 0)])
def test_deadline_picks_the_deepest_exit_that_fits(budget_ms, expected_exit):
    detector, engine = make_detector()
    deadline = now_ns() + budget_ms * MS
    outcome = run_policy(detector, detector.begin(FRAME), PolicyConfig(kind="deadline", margin_ms=1), deadline_ns=deadline)
    assert outcome.exit_index == expected_exit
    assert ("exit0" in engine.calls) == (expected_exit == 0)  # the shallow head is skipped when not needed


def test_deadline_replans_after_a_stage_that_ran_slow():
    """Planned for the full depth, but stage0 takes 15 ms instead of 2: stop at exit0, not past the deadline."""
    detector, engine = make_detector()

    def stage0_on_a_busy_cpu():
        time.sleep(0.015)
        return np.zeros(1, np.float32)

    engine.outputs["stage0"]["f0"] = stage0_on_a_busy_cpu  # the session holds this dict
    inference = detector.begin(FRAME)
    outcome = run_policy(detector, inference, PolicyConfig(kind="deadline", margin_ms=1), deadline_ns=now_ns() + 20 * MS)
    assert outcome.exit_index == 0 and engine.calls == ["stage0", "exit0"]


def test_policy_thresholds_are_validated():
    with pytest.raises(ValueError, match="low < high"):
        PolicyConfig(low=0.6, high=0.5)
