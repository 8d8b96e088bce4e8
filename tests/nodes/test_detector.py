"""The detector node as a real process: people in the real vtest clip, exits and stage stamps reported."""

import subprocess
import sys
import time

import zmq

from helpers import REPO, stop_process
from perception.latency import stage_durations_ns
from perception.messages import Detections
from perception.transport import Subscriber, resolve_endpoint


def start(name, args):
    return subprocess.Popen([sys.executable, "-m", f"nodes.{name}", "--name", name, *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)


def test_detects_people_in_real_video_with_latency_stamps(tmp_path, run_dir):
    (tmp_path / "detector.yaml").write_text(
        f"model: {REPO}/perception/weights/yolox_nano.json\nengine: {{threads: 1}}\npolicy: {{kind: fixed}}\n"
        "stale_ms: 1000\nbudget_ms: 2000\nreserve_ms: 10\n"
    )
    (tmp_path / "capture.yaml").write_text(
        f"source: {{kind: video, path: {REPO}/recordings/pets09_vtest_eval.avi}}\nrate: 5\nmax_frames: 12\n"
        "wait_for_subscribers: 1\n"
    )
    context = zmq.Context()
    subscriber = Subscriber(context, resolve_endpoint("detector", run_dir), "detections", Detections, latest=False)
    detector = start("detector", ["--config", str(tmp_path / "detector.yaml")])
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
