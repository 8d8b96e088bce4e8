"""`perception fleet-replay`: drives replayed in parallel as Ray tasks (a local Ray with 2 CPUs),
one report. Copies of a drive decide identically and match their reference, a bad file is a
failed drive with its reason that never stops the others, a drive past its timeout is cancelled,
and nothing is left running or on disk afterwards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import REPO, run_python
from perception.evaluation.coco_ap import GroundTruth
from perception.evaluation.detector_eval import Annotations
from perception.fleet.report import (
    TRUNCATED_REASON, Drive, accuracy, build_fleet_report, drive_entry, drive_labels, format_table,
)
from perception.pipeline import recorded_frames

DASHCAM = REPO / "recordings" / "udacity_dashcam.mcap"
CAR = 2  # COCO class index of "car" in the detector's output
# The black car ahead in tests/data/udacity_test1.jpg (x1, y1, x2, y2); frame i of the tiny drive
# is the still rolled TINY_SHIFT_PX * (i - 1) to the right, so the car moves with it.
TINY_CAR = (815.0, 412.0, 943.0, 492.0)
TINY_SHIFT_PX = 80
TINY_FRAMES = 4

# Runs `perception fleet-replay` as a child subreaper: a process the command leaves behind (a
# Ray daemon, a node of a cancelled replay) is re-parented here instead of to init, so it can be
# found. Prints {"rc", "left": [command lines]} and kills what it found.
SUBREAPER = textwrap.dedent("""
    import ctypes, json, os, signal, subprocess, sys, time
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    rc = subprocess.run([sys.executable, "-m", "perception.cli", "fleet-replay", *sys.argv[1:]]).returncode

    def children():
        found = {}
        for entry in os.listdir("/proc"):
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                if entry.isdigit() and int(stat[1]) == os.getpid() and stat[0] != "Z":
                    found[int(entry)] = open(f"/proc/{entry}/cmdline").read().replace("\\0", " ").strip()
            except (OSError, IndexError):
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        return found

    deadline = time.monotonic() + 15  # Ray's daemons take a moment to exit after ray.shutdown()
    while (left := children()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    print(json.dumps({"rc": rc, "left": list(left.values())}))
""")


@pytest.fixture
def private_tmp():
    """A short private TMPDIR for the command: the launchers' run directories (ipc paths stay under
    ~100 characters) and Ray's session land there, so what is left is this test's alone."""
    directory = Path(f"/tmp/fl-{os.getpid()}-{os.urandom(3).hex()}")
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def fleet_replay(args: list, tmp: Path, timeout_s: float = 600) -> tuple[dict, subprocess.CompletedProcess]:
    result = subprocess.run([sys.executable, "-c", SUBREAPER, *map(str, args)], capture_output=True, text=True,
                            timeout=timeout_s, cwd=REPO, env={**os.environ, "TMPDIR": str(tmp)})
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def make_tiny_drive(folder: Path) -> Path:
    """A 4-frame recording of the dashcam still, the car moving right 80 px a frame."""
    from perception.messages import FrameHeader, FrameTransport
    from perception.recording import RecordingWriter

    still = cv2.imread(str(REPO / "tests" / "data" / "udacity_test1.jpg"))
    path = folder / "tiny.mcap"
    with RecordingWriter(path) as writer:
        for frame_id in range(1, TINY_FRAMES + 1):
            header = FrameHeader(frame_id=frame_id, capture_ns=frame_id, media_ns=(frame_id - 1) * 100_000_000,
                                 width=still.shape[1], height=still.shape[0], channels=3,
                                 transport=FrameTransport.INLINE)
            writer.write_frame(header, np.roll(still, TINY_SHIFT_PX * (frame_id - 1), axis=1), log_time_ns=frame_id)
    return path


def tiny_annotations(offset: int = 0) -> dict:
    """COCO json of the tiny drive: one car per frame; `offset` shifts the frame indices (a wrong labelling)."""
    x1, y1, x2, y2 = TINY_CAR
    images = [{"id": 10 + i, "frame_index": i + offset, "file_name": f"{i}.jpg"} for i in range(TINY_FRAMES)]
    annotations = [{"id": i + 1, "image_id": 10 + i, "category_id": 3, "iscrowd": 0,
                    "bbox": [x1 + TINY_SHIFT_PX * i, y1, x2 - x1, y2 - y1]} for i in range(TINY_FRAMES)]
    return {"images": images, "annotations": annotations, "categories": [{"id": 3, "name": "car"}]}


@pytest.mark.timeout(660)  # four drives on Ray: over six minutes on a 2-core machine with two busy processes
def test_copies_decide_identically_and_a_bad_drive_fails_alone(tmp_path, private_tmp):
    drives = tmp_path / "drives"
    for copy in ("a", "b"):
        (drives / copy).mkdir(parents=True)
        shutil.copy(DASHCAM, drives / copy / DASHCAM.name)  # references: recordings/udacity_dashcam.reference.jsonl
    garbage = drives / "garbage.mcap"
    garbage.write_bytes(os.urandom(3000))
    labelled = drives / "labelled"
    labelled.mkdir()
    make_tiny_drive(labelled)
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "tiny.coco.json").write_text(json.dumps(tiny_annotations()))
    report_path = tmp_path / "fleet.json"

    outcome, result = fleet_replay([drives / "a", drives / "b" / DASHCAM.name, garbage, labelled,
                                    "--references", REPO / "recordings", "--evaluate", labels,
                                    "--json", report_path, "--plots", tmp_path / "plots"], private_tmp)
    assert outcome["left"] == [], f"left running: {outcome['left']}"
    assert outcome["rc"] == 1, result.stderr[-3000:]  # a failed drive is a failure
    report = json.loads(report_path.read_text())
    by_name = {Path(d["drive"]).relative_to(drives).as_posix(): d for d in report["drives"]}
    assert list(by_name) == ["a/udacity_dashcam.mcap", "b/udacity_dashcam.mcap", "garbage.mcap", "labelled/tiny.mcap"]

    copies = [by_name["a/udacity_dashcam.mcap"], by_name["b/udacity_dashcam.mcap"]]
    for drive in copies:
        assert (drive["status"], drive["differences"], drive["frames"], drive["decisions"]) == ("identical", 0, 38, 38)
        assert drive["end_to_end_ms"]["p50"] > 0 and drive["accuracy"] is None
    assert report["consistency"] == [{"sha256": copies[0]["sha256"], "drives": [d["drive"] for d in copies],
                                      "identical": True, "differences": {copies[1]["drive"]: 0}}]
    # Parallel launchers on one host: separate run directories and rings, all removed afterwards.
    assert copies[0]["run_id"] != copies[1]["run_id"]
    assert all(Path(d["run_dir"]).parent == private_tmp and not Path(d["run_dir"]).exists() for d in copies)
    assert not [name for name in os.listdir("/dev/shm") if any(d["run_id"] in name for d in copies)]
    assert not list(private_tmp.glob("perception-*"))

    bad = by_name["garbage.mcap"]
    assert (bad["status"], bad["reason"]) == ("failed", f"recording {garbage}: not an MCAP file")
    assert f"FAILED {garbage}: recording {garbage}: not an MCAP file" in result.stdout

    tiny_entry = by_name["labelled/tiny.mcap"]
    assert (tiny_entry["status"], tiny_entry["decisions"]) == ("unchecked", TINY_FRAMES)  # no reference: not compared
    assert tiny_entry["accuracy"]["frames_scored"] == TINY_FRAMES
    assert tiny_entry["accuracy"]["AP50"] >= 0.5, tiny_entry["accuracy"]

    assert report["summary"] == {"identical": 2, "different": 0, "unchecked": 1, "failed": 1, "drives": 4, "truncated": 0}
    assert report["pooled_end_to_end_ms"]["count"] == 2 * 38 + TINY_FRAMES
    assert (report["cluster_cpus"], report["cpus_per_drive"], report["exit_code"]) == (os.cpu_count(), 1, 1)
    assert (tmp_path / "plots" / "fleet_latency.png").stat().st_size > 0


def test_a_drive_past_its_timeout_is_cancelled_and_its_nodes_and_run_removed(tmp_path, private_tmp):
    drive = tmp_path / "slow.mcap"
    # Any replay outlasts 3 s: nodes load their models, 38 frames go in lockstep, and the launch
    # drains 2 s after the source ends. Here the cancel comes while the nodes run.
    shutil.copy(DASHCAM, drive)
    outcome, result = fleet_replay([drive, "--timeout-s", "3", "--json", tmp_path / "r.json"], private_tmp)
    assert outcome["left"] == [], f"left running: {outcome['left']}"
    assert outcome["rc"] == 1, result.stderr[-3000:]
    [entry] = json.loads((tmp_path / "r.json").read_text())["drives"]
    assert (entry["status"], entry["reason"]) == ("failed", "timed out after 3 s: cancelled")
    assert not list(private_tmp.glob("perception-*"))  # the killed launcher's run directory went too


def test_bad_input_and_a_missing_ray_are_one_line_and_ray_is_imported_only_by_the_command(tmp_path):
    missing = run_python(["-m", "perception.cli", "fleet-replay", str(tmp_path / "nowhere.mcap")])
    assert (missing.returncode, missing.stderr.strip()) == (
        2, f"perception fleet-replay: {tmp_path / 'nowhere.mcap'}: no such file or folder")
    empty = run_python(["-m", "perception.cli", "fleet-replay", str(tmp_path)])
    assert (empty.returncode, empty.stderr.strip()) == (2, f"perception fleet-replay: {tmp_path}: no .mcap drives in this folder")

    drive = tmp_path / "d.mcap"
    drive.write_bytes(b"anything")
    code = ("import sys\nimport perception.fleet.command, perception.fleet.task, perception.fleet.report\n"
            "assert 'ray' not in sys.modules, 'ray imported before the command runs'\n"
            "sys.modules['ray'] = None  # as if not installed\n"
            f"from perception.cli import main\nsys.exit(main(['fleet-replay', {str(drive)!r}]))")
    no_ray = run_python(["-c", code])
    assert (no_ray.returncode, no_ray.stderr.strip()) == (2, "fleet-replay: Ray is not installed: pip install 'perception[fleet]'")


# -- the aggregate, without Ray -------------------------------------------------------------


def row(frame_id: int, action: str = "PROCEED", detections: list | None = None) -> dict:
    return {"frame_id": frame_id, "action": action, "reason": "CLEAR", "target_class": None, "exit": 1,
            "detections": detections if detections is not None else [[CAR, 0.9, 10.0, 10.0, 50.0, 40.0]]}


def ran(rows: list[dict]) -> dict:
    timeline = [{"end_to_end_ns": 20_000_000 + i} for i in range(len(rows))]
    return {"status": "ran", "rows": rows, "frames": len(rows), "seconds": 1.0,
            "report": {"end_to_end_ms": {"p50": 20.0}, "timeline": timeline}}


def aggregate(cases: list[tuple[str, str, dict, list[dict] | None]]) -> dict:
    """cases: (label, content hash, task result, reference rows or None)."""
    entries, rows, timelines = [], {}, {}
    for label, sha, result, reference in cases:
        drive = Drive(Path(label), label, sha, Path("ref") if reference else None, None)
        entries.append(drive_entry(drive, result, reference, None))
        rows[label] = result.get("rows") or []
        timelines[label] = [t["end_to_end_ns"] for t in (result.get("report") or {}).get("timeline", [])]
    return build_fleet_report(entries, rows, timelines, {"address": None, "cluster_cpus": 2, "cpus_per_drive": 1,
                                                         "timeout_s": 60}, wall_s=1.0)


def test_exit_status_is_0_only_when_every_drive_ran_and_matches_and_copies_agree():
    same = [row(1), row(2)]
    assert aggregate([("a", "x", ran(same), same), ("b", "y", ran(same), None)])["exit_code"] == 0
    braked = [row(1), row(2, "BRAKE")]
    different = aggregate([("a", "x", ran(braked), same)])
    assert (different["exit_code"], different["drives"][0]["status"]) == (1, "different")
    assert different["drives"][0]["difference_lines"] == ["frame 2: action PROCEED -> BRAKE"]
    # Copies (same content) without references that disagree: not deterministic, a failure.
    disagree = aggregate([("a", "x", ran(same), None), ("b", "x", ran(braked), None)])
    assert disagree["exit_code"] == 1 and disagree["consistency"][0]["identical"] is False
    failed = aggregate([("a", "x", ran(same), same), ("b", "x", {"status": "failed", "reason": "timed out"}, same)])
    assert failed["exit_code"] == 1 and failed["summary"]["failed"] == 1
    assert failed["pooled_end_to_end_ms"]["count"] == 2  # the failed drive adds no samples


def test_a_drive_cut_short_is_flagged_in_the_entry_the_summary_and_the_table(tmp_path):
    """A recording a crash cut short replays to its last complete record; the fleet says so rather than
    reporting it like any other drive (perception replay warns too)."""
    cut = tmp_path / "cut.mcap"
    whole = DASHCAM.read_bytes()
    cut.write_bytes(whole[:len(whole) * 2 // 3])
    frames, truncated = recorded_frames(cut)
    assert truncated and 0 < frames < 38
    assert recorded_frames(DASHCAM) == (38, False)

    same = [row(1), row(2)]
    report = aggregate([("whole.mcap", "x", ran(same), None), ("cut.mcap", "y", {**ran(same), "truncated": True}, None)])
    whole_entry, cut_entry = report["drives"]
    assert (whole_entry["truncated"], whole_entry["reason"]) == (False, None)
    assert (cut_entry["truncated"], cut_entry["status"], cut_entry["reason"]) == (True, "unchecked", TRUNCATED_REASON)
    assert report["summary"]["truncated"] == 1 and report["exit_code"] == 0
    table = format_table(report)
    assert TRUNCATED_REASON in table and "1 cut short (replayed to their last complete record)" in table


def test_fleet_plot_names_drives_by_file_and_by_folder_where_names_repeat():
    assert drive_labels(["/d/a/x.mcap", "/d/b/y.mcap"]) == ["x", "y"]
    assert drive_labels(["/d/a/x.mcap", "/d/b/x.mcap"]) == ["a/x", "b/x"]


def test_accuracy_matches_frame_id_n_to_frame_index_n_minus_1():
    def annotations(offset: int) -> Annotations:
        data = tiny_annotations(offset)
        return Annotations([GroundTruth(a["image_id"], 3, tuple(a["bbox"])) for a in data["annotations"]],
                           {im["frame_index"]: im["id"] for im in data["images"]}, {CAR: 3})

    x1, y1, x2, y2 = TINY_CAR
    rows = [row(i + 1, detections=[[CAR, 0.9, x1 + TINY_SHIFT_PX * i, y1, x2 + TINY_SHIFT_PX * i, y2]])
            for i in range(TINY_FRAMES)]
    assert accuracy(rows, annotations(0))["AP50"] == 1.0
    assert accuracy(rows, annotations(1))["AP50"] == 0.0  # labels a frame late: no box overlaps enough
