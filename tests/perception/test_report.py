import pytest

from perception.messages import Action, Decision, Detections, Reason, Stamp, WatchdogStatus, SystemState
from perception import REPO
from perception.connector import Connector
from perception.launch import build_graph, load_launch_file
from perception.report import Collected, Collector, CollectorError, build_report, format_report, write_outputs

MS = 1_000_000


def collected() -> Collected:
    data = Collected()
    for i in range(1, 101):
        c = i * 40 * MS
        stamps = (Stamp("capture", c), Stamp("publish", c + 1 * MS), Stamp("det.recv", c + 2 * MS),
                  Stamp("det.preprocess", c + 3 * MS), Stamp("det.stage0", c + 8 * MS), Stamp("det.exit0", c + 10 * MS),
                  Stamp("det.post", c + 11 * MS), Stamp("decision", c + 12 * MS))
        received = c + (13 if i != 50 else 150) * MS  # frame 50 is late
        data.decisions.append((received, Decision(frame_id=i, capture_ns=c, stamps=stamps, action=Action.PROCEED,
                                                  reason=Reason.CLEAR, decided_by="decision")))
        data.detections.append(Detections(frame_id=i, capture_ns=c, image_width=8, image_height=8,
                                          exit_index=0 if i % 4 else 1, exit_count=2))
    data.decisions.append((0, Decision(frame_id=50, capture_ns=50 * 40 * MS, action=Action.BRAKE,
                                       reason=Reason.DEADLINE_MISS, decided_by="watchdog")))
    data.status = WatchdogStatus(frame_id=100, capture_ns=0, state=SystemState.NOMINAL, depth_limit=1,
                                 counters={"deadline_misses": 1})
    data.counters = {"capture": {"frames.sent": 100}, "detector": {"frames.stale": 2, "frames.superseded": 3}}
    return data


def test_report_has_every_stage_end_to_end_misses_drops_and_exits():
    report = build_report(collected(), budget_ms=100)
    assert list(report["stages_ms"]) == ["capture", "transport", "preprocess", "stage0", "exit0", "postprocess", "decision"]
    assert report["stages_ms"]["stage0"]["p50"] == 5.0 and report["stages_ms"]["capture"]["p50"] == 1.0
    assert report["end_to_end_ms"]["p50"] == 13.0 and report["end_to_end_ms"]["max"] == 150.0
    assert report["deadline_misses"] == {"frames_missed": 1, "late_decisions": 1, "watchdog_failsafes": 1, "miss_rate": 0.01}
    assert report["dropped_frames"]["stale"] == 2 and report["dropped_frames"]["superseded"] == 3
    assert report["exit_histogram"] == {"0": 75, "1": 25} and report["decisions"] == 100
    assert report["failsafes"] == [{"frame_id": 50, "capture_ns": 50 * 40 * MS, "reason": "DEADLINE_MISS"}]
    table = format_report(report)
    assert "end to end" in table and "miss rate 0.01" in table


def test_json_and_plots_are_written(tmp_path):
    report = build_report(collected(), budget_ms=100, title="t")
    written = write_outputs(report, tmp_path / "r.json", tmp_path / "plots")
    assert [p.name for p in written] == ["r.json", "latency_histogram_cdf.png", "latency_timeline.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_a_collector_that_died_mid_run_fails_loudly_instead_of_reporting_short(run_dir, monkeypatch):
    def broken(self):
        raise OSError("socket gone")

    monkeypatch.setattr(Collector, "_collect", broken)
    collector = Collector(build_graph(load_launch_file(REPO / "launch/replay.yaml"), "replay.yaml"),
                          Connector("collector", run_dir))
    with pytest.raises(CollectorError, match="stopped collecting mid-run: OSError: socket gone"):
        collector.close()


def test_the_timeline_starts_at_the_earliest_capture_so_no_fail_safe_is_drawn_before_it():
    """A fail-safe for a frame captured before the first decided one (its decision never came) was
    drawn at -0.12 s."""
    from perception.report import timeline_seconds

    report = {"timeline": [{"capture_ns": 1_120_000_000}, {"capture_ns": 1_153_000_000}],
              "failsafes": [{"capture_ns": 1_000_000_000}]}
    frames, failsafes = timeline_seconds(report)
    assert frames.tolist() == [0.12, 0.153] and failsafes == [0.0]
