import itertools
import json
import re
from pathlib import Path


from perception.replay import compare_rows


def row(frame_id, action="PROCEED", exit_=1, detections=((2, 0.9, 10.0, 10.0, 50.0, 40.0),)):
    return {"frame_id": frame_id, "action": action, "reason": "CLEAR" if action == "PROCEED" else "OBJECT_IN_PATH",
            "target_class": None, "exit": exit_, "detections": [list(d) for d in detections]}


def test_identical_runs_have_no_differences():
    rows = [row(i) for i in range(1, 5)]
    assert compare_rows(rows, json.loads(json.dumps(rows))) == []


def test_float_noise_is_tolerated_but_not_a_changed_decision_exit_or_box():
    reference = [row(1), row(2), row(3), row(4)]
    current = [row(1, detections=((2, 0.905, 10.4, 10.0, 50.0, 40.3),)),  # float noise between CPUs
               row(2, action="BRAKE"), row(3, exit_=0), row(4, detections=((2, 0.9, 30.0, 10.0, 50.0, 40.0),))]
    differences = compare_rows(reference, current)
    assert differences[0] == "frame 2: action PROCEED -> BRAKE"
    assert "frame 3: exit 1 -> 0" in differences
    assert any(d.startswith("frame 4: detection") for d in differences)
    assert not any(d.startswith("frame 1") for d in differences)


def test_missing_frames_on_either_side_are_differences():
    assert compare_rows([row(1), row(2)], [row(1), row(3)]) == ["frame 2: no decision in this run",
                                                                 "frame 3: missing in reference"]


def test_bench_runs_the_pipeline_and_writes_report_and_plots(tmp_path):
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "bench", "--synthetic", "320x240", "--rate", "15", "--duration", "2",
                         "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "plots")], timeout_s=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames_captured"] == 30 and report["decisions"] >= 25
    stages = set(report["stages_ms"])
    assert {"capture", "transport", "preprocess", "postprocess", "decision"} <= stages
    # Every exit used is timed: run part by part (stage0 first) or by its direct graph (exitK.direct).
    assert all({f"exit{k}", f"exit{k}.direct"} & stages for k in report["exit_histogram"])
    assert report["end_to_end_ms"]["count"] == report["decisions"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["latency_histogram_cdf.png", "latency_timeline.png"]
    assert "end to end" in result.stdout


def test_bench_baseline_prints_the_ratio_and_writes_its_section(tmp_path):
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "bench", "--synthetic", "320x240", "--rate", "10", "--duration", "1",
                         "--baseline", "--json", str(tmp_path / "r.json")], timeout_s=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^pipeline / baseline +\d+\.\d\dx +\d+\.\d\dx$", result.stdout, re.M), result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    baseline = report["baseline"]
    assert baseline["frames_captured"] == baseline["decisions"] == report["frames_captured"] == 10
    assert baseline["end_to_end_ms"]["count"] == 10 and baseline["model"] == "yolox_nano"
    assert {"late_frames", "max_behind_ms", "rate_slips"} <= set(baseline)
    assert baseline["end_to_end_without_backlog_ms"]["count"] == 10
    assert baseline["ratio"]["p50"] == round(report["end_to_end_ms"]["p50"] / baseline["end_to_end_ms"]["p50"], 3)
    assert baseline["ratio"]["p99"] == round(report["end_to_end_ms"]["p99"] / baseline["end_to_end_ms"]["p99"], 3)


BUNDLED = "recordings/udacity_dashcam.mcap"
REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REFERENCE = "recordings/udacity_dashcam.reference.jsonl"


def test_deterministic_replay_of_the_bundled_drive_matches_its_reference(tmp_path):
    """What CI's process replay checks: same recording, same config -> same decisions and exits."""
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "replay", BUNDLED, "--speed", "max", "--compare", REFERENCE,
                         "--json", str(tmp_path / "r.json")], timeout_s=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "0 difference(s) over 38 frames" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames_captured"] == 38 and report["decisions"] == 38


def test_replay_against_a_changed_reference_prints_the_difference_and_fails(tmp_path):
    from helpers import REPO, run_python

    rows = [json.loads(line) for line in (REPO / REFERENCE).read_text().splitlines()]
    rows[4]["action"] = "BRAKE"
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_python(["-m", "perception.cli", "replay", BUNDLED, "--speed", "max", "--compare", str(changed)],
                        timeout_s=120)
    assert result.returncode == 1
    assert "frame 5: action BRAKE -> PROCEED" in result.stdout
    assert "1 difference(s) over 38 frames" in result.stdout


def test_replay_of_a_file_that_is_not_a_recording_is_one_line_naming_it(tmp_path):
    from helpers import run_python

    bogus = tmp_path / "drive.mcap"
    bogus.write_bytes(b"not a recording at all")
    result = run_python(["-m", "perception.cli", "replay", str(bogus)], timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"replay: recording {bogus}: not an MCAP file"


def test_bench_with_a_misspelled_detector_key_is_one_line_naming_it():
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "bench", "--synthetic", "320x240", "--duration", "1",
                         "--detector", "engine.spinn=true"], timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"perception bench: {REPO_CONFIGS}/detector.yaml (node detector): engine.spinn: unknown key (did you mean 'spin'?)"]


APPROACH = "recordings/udacity_approach.mcap"
APPROACH_REFERENCE = "recordings/udacity_approach.reference.jsonl"


def approach_reference():
    from helpers import REPO

    return [json.loads(line) for line in (REPO / APPROACH_REFERENCE).read_text().splitlines()]


def test_the_approach_reference_proceeds_slows_brakes_for_the_car_and_releases():
    """What makes the approach drive worth replaying: a decision node that never brakes fails on it."""
    rows = approach_reference()
    assert [row["frame_id"] for row in rows] == list(range(1, len(rows) + 1))
    assert [action for action, _ in itertools.groupby(row["action"] for row in rows)] == \
        ["PROCEED", "SLOW", "BRAKE", "SLOW", "PROCEED"]
    assert {row["target_class"] for row in rows if row["action"] != "PROCEED"} == {2}  # COCO car


def test_deterministic_replay_of_the_approach_matches_its_reference():
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "replay", APPROACH, "--speed", "max", "--compare", APPROACH_REFERENCE],
                        timeout_s=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"0 difference(s) over {len(approach_reference())} frames" in result.stdout


def test_a_changed_decision_rule_fails_the_compare_from_the_first_braking_frame():
    """--decision changes the rules for one run: with braking thresholds out of reach the node only
    slows, and the compare names the first frame where the reference brakes."""
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "replay", APPROACH, "--speed", "max", "--compare", APPROACH_REFERENCE,
                         "--decision", "rules.brake_height=0.9", "--decision", "rules.brake_ttc_s=0.5"], timeout_s=180)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    differences = [line for line in result.stdout.splitlines() if re.match(r"frame \d+: ", line)]
    first_brake = next(row["frame_id"] for row in approach_reference() if row["action"] == "BRAKE")
    assert differences[0] == f"frame {first_brake}: action BRAKE -> SLOW"
    assert not any("detection" in line for line in differences)  # same frames, same detector: only the rules differ
    assert f"{len(differences)} difference(s) over {len(approach_reference())} frames" in result.stdout


def test_replay_with_a_misspelled_decision_key_is_one_line_naming_it():
    from helpers import run_python

    result = run_python(["-m", "perception.cli", "replay", APPROACH, "--speed", "max",
                         "--decision", "rules.brake_hieght=0.9"], timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"perception replay: {REPO_CONFIGS}/decision.yaml (node decision): rules.brake_hieght: unknown key "
        "(did you mean 'brake_height'?)"]


def test_a_slowed_replay_loosens_the_watchdogs_topic_rates_and_a_real_time_one_keeps_the_table():
    """A replay at x0.1 sends 2.5 frames a second: under the table's 4 Hz it would fail safe on every
    frame for a rate nobody promised. Real time keeps the table's thresholds."""
    from perception.launch import resolve_node_config
    from perception.pipeline import pipeline_launch
    from perception.topics import FRAMES

    def watchdog_limits(**kwargs):
        spec = pipeline_launch({"kind": "recording", "path": "drive.mcap"}, **kwargs)
        return resolve_node_config(next(n for n in spec.nodes if n.node == "watchdog"), "replay")[1].rules.topics

    assert watchdog_limits(speed=1.0) == {} and watchdog_limits(rate="max", deterministic=True) == {}
    slow = watchdog_limits(speed=0.1)[FRAMES.name]
    # 2.5 Hz is OK with room for jitter, half of it warns, a quarter fails safe; a frame period is no timeout
    assert slow.warn_rate_hz <= 2.5 / 2 and slow.error_rate_hz <= 2.5 / 4 and slow.timeout_s >= 2 / 2.5
