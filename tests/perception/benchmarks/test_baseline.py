"""The single-process baseline of `perception bench --baseline`: one latency per frame, inference
inside it, frames never processed before they are due, and a backlog that shows when it falls behind."""

import pytest

from perception.benchmarks.baseline import ratios, run_baseline
from perception.pipeline import PIPELINE_LAUNCH, pipeline_launch

FRAMES = 10


def baseline(rate: object, fps: float) -> dict:
    source = {"kind": "synthetic", "width": 320, "height": 240, "fps": fps, "count": FRAMES}
    return run_baseline(pipeline_launch(source, rate=rate, max_frames=FRAMES), str(PIPELINE_LAUNCH))


@pytest.mark.parametrize("rate", [20.0, "source"], ids=["fixed rate", "recorded timeline"])
def test_one_latency_per_frame_including_inference_and_pacing_honoured(rate):
    report = baseline(rate, fps=20.0)
    assert report["decisions"] == FRAMES and report["end_to_end_ms"]["count"] == FRAMES
    assert [row["frame_id"] for row in report["timeline"]] == list(range(1, FRAMES + 1))
    assert report["model"] == "yolox_nano" and report["exit_histogram"] == {"0": FRAMES}
    stages = report["stages_ms"]
    assert set(stages) == {"backlog", "preprocess", "full", "postprocess", "decision"}
    assert all(stages[s]["count"] == FRAMES and stages[s]["mean"] > 0 for s in stages if s != "backlog")
    # Each frame's latency is its stages plus publication-free bookkeeping, so never less than their sum.
    assert report["end_to_end_ms"]["mean"] >= sum(s["mean"] for s in stages.values()) - 0.01
    assert all(row["end_to_end_ns"] > 0 for row in report["timeline"])
    # Paced: frame k is stamped no earlier than k periods after frame 0 (50 ms at 20 Hz), whatever the speed.
    t0 = report["timeline"][0]["capture_ns"]
    for k, row in enumerate(report["timeline"]):
        assert row["capture_ns"] - t0 >= k * 50_000_000 - 1_000_000, (k, row)


def test_a_loop_that_falls_behind_accumulates_latency_instead_of_skipping():
    # 1000 frames a second on the recorded timeline: every frame after the first is due before the
    # loop is done with the one before; a single process cannot skip, so each waits longer.
    report = baseline("source", fps=1000.0)
    latencies = [row["end_to_end_ns"] for row in report["timeline"]]
    assert report["decisions"] == FRAMES and report["late_frames"] == FRAMES - 1
    assert report["max_behind_ms"] > 0 and report["rate_slips"] == 0
    assert latencies == sorted(latencies) and latencies[-1] > latencies[1]
    assert report["stages_ms"]["backlog"]["max"] > 0  # the wait is its own stage, not counted as preprocessing
    assert report["end_to_end_without_backlog_ms"]["max"] < report["end_to_end_ms"]["max"]


def test_ratios_are_pipeline_over_baseline():
    assert ratios({"end_to_end_ms": {"p50": 30.0, "p99": 60.0}}, {"end_to_end_ms": {"p50": 20.0, "p99": 30.0}}) == \
        {"p50": 1.5, "p99": 2.0}
    assert ratios({"end_to_end_ms": {}}, {"end_to_end_ms": {"p50": 20.0, "p99": 30.0}}) == {"p50": None, "p99": None}
