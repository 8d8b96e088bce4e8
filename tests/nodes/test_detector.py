"""The detector node as a real process: people in the real vtest clip, exits and stage stamps reported."""

import json
import shutil
import subprocess
import sys
import time

import zmq

from helpers import REPO, run_python, stop_process
from nodes.detector import input_counter
from perception.latency import stage_durations_ns
from perception.messages import Detections
from perception.transport import Subscriber, resolve_endpoint
from perception.topics import CONTROL, DETECTIONS, FRAMES


def start(name, args):
    return subprocess.Popen([sys.executable, "-m", f"nodes.{name}", "--name", name, *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)


def test_detects_people_in_real_video_with_latency_stamps(tmp_path, run_dir):
    (tmp_path / "detector.yaml").write_text(
        f"node: {{budget_ms: 2000, inputs: {{frames: [capture/frames]}}}}\nmodel: {REPO}/perception/weights/yolox_nano.json\n"
        "engine: {threads: 1}\npolicy: {kind: fixed}\nstale_ms: 1000\nreserve_ms: 10\n"
    )
    (tmp_path / "capture.yaml").write_text(
        f"source: {{kind: video, path: {REPO}/recordings/pets09_vtest_eval.avi}}\nrate: 5\nmax_frames: 12\n"
        "wait_for_subscribers: 1\n"
    )
    context = zmq.Context()
    subscriber = Subscriber(context, resolve_endpoint("detector", run_dir), DETECTIONS, latest=False)
    connected = subscriber.socket.get_monitor_socket(zmq.EVENT_CONNECTED)
    detector = start("detector", ["--config", str(tmp_path / "detector.yaml")])
    # Frames start only once this test hears the detector: on a busy machine its first detections
    # could otherwise go out before the subscription reached it (ZeroMQ drops them then).
    assert connected.poll(60_000), "the detector never bound its output"
    subscriber.socket.disable_monitor()
    connected.close()
    capture = start("capture", ["--config", str(tmp_path / "capture.yaml")])
    got: list[Detections] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < 12 and time.monotonic() < deadline and capture.poll() in (None, 0):
            if subscriber.socket.poll(200):
                got += [r.message for r in subscriber.receive()]
    finally:
        stop_process(capture)
        stop_process(detector)
        subscriber.close()
        context.term()
    assert detector.returncode == 0, detector.stderr.read()
    assert [d.frame_id for d in got] == list(range(1, 13))
    persons = [int((d.class_ids == 0).sum()) for d in got]
    assert min(persons) >= 3, persons  # the PETS09 scene has 4-8 people in view in these frames
    first = got[0]
    assert (first.image_width, first.image_height, first.exit_index, first.exit_count) == (768, 576, 0, 1)
    stages = list(stage_durations_ns(first.capture_ns, first.stamps))
    assert stages == ["capture", "publish", "det.recv", "det.preprocess", "det.full", "det.post"]


def test_a_model_file_with_the_wrong_graph_exits_with_one_line_naming_file_part_and_names(tmp_path, run_dir):
    """stage0's graph saved as exit1's file (a bad copy or export): caught at load, never restarted."""
    weights = REPO / "perception" / "weights"
    manifest = json.loads((weights / "yolox_nano_exits.json").read_text())
    manifest["classes_file"] = str(weights / manifest["classes_file"])
    for part in manifest["stages"] + manifest["exits"]:
        part["file"] = str(weights / part["file"])
        if part.get("direct_file"):
            part["direct_file"] = str(weights / part["direct_file"])
    wrong = tmp_path / "yolox_nano_exit1.onnx"
    shutil.copy(weights / "yolox_nano_stage0.onnx", wrong)
    manifest["exits"][1]["file"] = str(wrong)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "detector.yaml").write_text(f"model: {tmp_path / 'manifest.json'}\nengine: {{threads: 1}}\n")
    result = run_python(["-m", "nodes.detector", "--name", "detector", "--config", str(tmp_path / "detector.yaml")])
    assert result.returncode == 78, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert "Traceback" not in result.stderr and len(errors) == 1
    assert errors[0].endswith(
        f"model file {wrong} does not match part exit1 of its manifest: expected inputs [pan_s8, pan_s16, pan_s32] "
        "-> outputs [output_exit1], found inputs [images] -> outputs [dark3, dark4]")


def test_the_detector_body_runs_in_process_on_fed_frames_and_obeys_the_depth_ceiling():
    """The node body with its inputs fed directly (perception.testing): no processes, same code."""
    import cv2

    from nodes.detector import DetectorConfig, detect
    from perception.config import from_mapping
    from perception.latency import now_ns
    from perception.messages import Control, FrameHeader, FrameTransport, Stamp
    from perception.testing import TestingNode

    image = cv2.imread(str(REPO / "tests/data/udacity_test1.jpg"))
    config = from_mapping(DetectorConfig, {"policy": {"kind": "fixed"}, "engine": {"threads": 1},
                                           "stale_ms": 10_000, "node": {"budget_ms": 10_000}, "reserve_ms": 10})

    def frame(i: int) -> FrameHeader:
        t = now_ns()
        return FrameHeader(frame_id=i, capture_ns=t, stamps=(Stamp("capture", t),), media_ns=0, width=image.shape[1],
                           height=image.shape[0], channels=3, transport=FrameTransport.INLINE)

    node = TestingNode("detector")
    node.expect(FRAMES, latest=True)
    node.feed(FRAMES, frame(1), image)
    detect(node, config)
    full = node.published(DETECTIONS)
    assert [(d.frame_id, d.exit_index, d.exit_count) for d in full] == [(1, 1, 2)]
    assert (full[0].class_ids == 2).sum() >= 2  # cars in the dashcam still

    node = TestingNode("detector")
    node.feed(CONTROL, Control(frame_id=0, capture_ns=0, target="detector", max_depth=0, reason="test"))
    node.feed(CONTROL, Control(frame_id=0, capture_ns=0, target="somebody-else", max_depth=1, reason="not mine"))
    node.expect(FRAMES, latest=True)
    node.feed(FRAMES, frame(2), image)
    node.feed(FRAMES, frame(3), image)
    detect(node, config)
    shallow = node.published(DETECTIONS)
    assert [(d.frame_id, d.exit_index) for d in shallow] == [(3, 0)]  # latest only: frame 2 superseded
    assert node.inputs[FRAMES].superseded == 1 and node.counters["exit0"] == 1


def test_a_frame_of_the_wrong_shape_is_dropped_and_counted_in_process():
    import numpy as np

    from nodes.detector import DetectorConfig, detect
    from perception.config import from_mapping
    from perception.latency import now_ns
    from perception.messages import FrameHeader, FrameTransport
    from perception.testing import TestingNode

    config = from_mapping(DetectorConfig, {"policy": {"kind": "fixed"}, "engine": {"threads": 1}, "stale_ms": 10_000,
                                           "node": {"budget_ms": 10_000}, "reserve_ms": 10})
    node = TestingNode("detector")
    gray = FrameHeader(frame_id=1, capture_ns=now_ns(), media_ns=0, width=64, height=48, channels=1,
                       transport=FrameTransport.INLINE)
    node.expect(FRAMES, latest=True)
    node.feed(FRAMES, gray, np.zeros((48, 64, 1), np.uint8))  # valid on the wire; not what YOLOX takes
    detect(node, config)
    assert node.published(DETECTIONS) == [] and node.counters["frames.bad"] == 1


def test_the_shipped_detector_and_decision_configs_mean_the_same_ego_path():
    """The adaptive policy spends full size and depth on risk as the decision node defines it: the two
    configs must not drift apart (perception/detection/risk.py)."""
    from nodes.decision import DecisionConfig
    from nodes.detector import DetectorConfig
    from perception.config import load_config

    risk = load_config(REPO / "configs/detector.yaml", DetectorConfig).risk
    assert risk.ego_path and risk.rules == load_config(REPO / "configs/decision.yaml", DecisionConfig).rules


def test_input_size_counters_are_bounded_whatever_the_source_does():
    """A source whose frames keep changing size must not grow the detector's heartbeat past the
    counter limit a heartbeat may carry (it would stop the detector)."""
    counters: dict[str, int] = {}
    for width in range(32, 32 * 200, 32):
        key = input_counter(counters, (width, 64))
        counters[key] = counters.get(key, 0) + 1
    assert len(counters) == 9 and counters["input.other"] == 199 - 8 and counters["input.32x64"] == 1
    assert input_counter(counters, (32, 64)) == "input.32x64"  # a size already counted keeps its own
