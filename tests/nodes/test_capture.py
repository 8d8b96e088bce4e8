"""The capture node as a real process: bad input is one clear line; frames cross tcp inline."""

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import zmq

from helpers import REPO, free_port, run_python, stop_process, wait_for
from perception.node import EXIT_UNAVAILABLE
from perception.transport import Subscriber, resolve_endpoint
from perception.topics import FRAMES


def run_capture(tmp_path, config_text, *extra):
    config = tmp_path / "capture.yaml"
    config.write_text(config_text)
    return run_python(["-m", "nodes.capture", "--name", "capture", "--config", str(config), *extra])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def test_missing_video_exits_with_one_line_naming_it(tmp_path, run_dir):
    result = run_capture(tmp_path, "source: {kind: video, path: missing.mp4}\n")
    assert result.returncode == 78
    assert len(error_lines(result.stderr)) == 1 and "missing.mp4: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_video_exits_with_one_line_naming_it(tmp_path, run_dir):
    (tmp_path / "bad.avi").write_bytes(b"\x00\x01garbage" * 1000)
    result = run_capture(tmp_path, "source: {kind: video, path: bad.avi}\n")
    assert result.returncode == 78
    assert len(error_lines(result.stderr)) == 1 and "bad.avi: cannot open" in result.stderr


def test_bad_config_type_exits_with_one_line_naming_key(tmp_path, run_dir):
    result = run_capture(tmp_path, "source: {kind: synthetic, fps: fast}\n")
    assert result.returncode == 78
    assert len(error_lines(result.stderr)) == 1 and "source.fps: expected a number" in result.stderr


def test_frames_that_change_size_reach_a_consumer_at_their_new_size(tmp_path, run_dir):
    """A camera switching mode, an image folder of mixed sizes: every frame goes out at its own
    size (a larger one on a new ring) and arrives intact; they used to be dropped as `bad_shape`."""
    from perception.sources import write_frame_index

    sizes = [(48, 64), (48, 64), (96, 128), (48, 64), (120, 160), (32, 64)]
    images = tmp_path / "images"
    images.mkdir()
    for i, size in enumerate(sizes):
        image = np.full((*size, 3), 90, np.uint8)
        write_frame_index(image, i)
        cv2.imwrite(str(images / f"{i}.png"), image)
    record = tmp_path / "frames.jsonl"
    (tmp_path / "monitor.yaml").write_text(f"node: {{inputs: {{frames: [capture/frames]}}}}\nrecord: {record.name}\n")
    # Looping, so that the capture node (and its rings) is still there when the consumer reads the last one.
    (tmp_path / "capture.yaml").write_text("source: {kind: images, path: images, loop: true}\nrate: 20\n"
                                           "wait_for_subscribers: 1\n")
    nodes = [subprocess.Popen([sys.executable, "-m", f"nodes.{name}", "--name", name, "--config",
                               str(tmp_path / f"{name}.yaml")], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for name in ("monitor", "capture")]
    try:
        lines = wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 6 and record.read_text(), 20)
        records = [json.loads(line) for line in lines.splitlines()][:6]
    finally:
        for node in nodes:
            stop_process(node)
    stderr = nodes[1].stderr.read()
    assert nodes[1].returncode == 0, stderr
    assert "frames change size at frame 3: 64x48 -> 128x96" in stderr
    assert "frames change size at frame 6: 160x120 -> 64x32" in stderr
    assert [(r["frame_id"], r["pixel_index"], r["intact"]) for r in records] == [(i + 1, i, True) for i in range(6)]
    assert [tuple(r["shape"][:2]) for r in records] == sizes
    rings = [r["ring"] for r in records]  # a larger frame gets a new ring; smaller ones fit the one there is
    assert rings[:2] == [rings[0]] * 2 and rings[2:4] == [f"{rings[0]}-2"] * 2 and rings[4:] == [f"{rings[0]}-3"] * 2


def test_inline_frames_over_tcp_reach_a_consumer_intact(tmp_path, run_dir):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    record = tmp_path / "frames.jsonl"
    # Plain tcp on loopback: the CURVE set-up is tested in tests/perception/test_security.py.
    (tmp_path / "monitor.yaml").write_text(
        f"node: {{insecure: true, inputs: {{frames: [capture/frames]}}, peers: {{capture: {{endpoint: '{endpoint}'}}}}}}\n"
        f"record: {record.name}\n")
    (tmp_path / "capture.yaml").write_text(
        f"node: {{publish: '{endpoint}', insecure: true}}\nsource: {{kind: synthetic, width: 320, height: 240, count: 40}}\n"
        "rate: 100\ntransport: inline\nwait_for_subscribers: 1\n"
    )
    monitor = subprocess.Popen([sys.executable, "-m", "nodes.monitor", "--name", "monitor", "--config",
                                str(tmp_path / "monitor.yaml")], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        capture = run_python(["-m", "nodes.capture", "--name", "capture", "--config", str(tmp_path / "capture.yaml")])
        assert capture.returncode == 0, capture.stderr
        lines = wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 40 and record.read_text(), 10)
        records = [json.loads(line) for line in lines.splitlines()]
        assert [r["frame_id"] for r in records] == list(range(1, 41))
        assert [r["pixel_index"] for r in records] == list(range(40))
        assert all(r["intact"] and r["ring"] == "" for r in records)
    finally:
        stop_process(monitor)
    assert monitor.returncode == 0


def test_a_camera_that_cannot_be_opened_exits_restartable_with_one_line(tmp_path, run_dir):
    """Unlike a bad file, a camera may come back (replugged, released): exit 69 (EX_UNAVAILABLE),
    which the launcher's restart policy retries until the source has had its start-up time to open
    (tests/perception/test_live_sources.py), not 78, which it never restarts."""
    result = run_capture(tmp_path, "source: {kind: camera, camera_index: 37}\n")
    assert result.returncode == EXIT_UNAVAILABLE == 69
    assert len(error_lines(result.stderr)) == 1 and "camera 37: cannot open" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_recording_damaged_mid_file_plays_up_to_the_damage_then_exits_with_one_line(tmp_path, run_dir):
    data = bytearray((REPO / "recordings" / "udacity_dashcam.mcap").read_bytes())
    offset = int(len(data) * 0.6)
    data[offset : offset + 16] = bytes(range(0xA0, 0xB0))
    (tmp_path / "drive.mcap").write_bytes(data)
    (tmp_path / "capture.yaml").write_text("source: {kind: recording, path: drive.mcap}\nrate: max\n"
                                           "wait_for_subscribers: 1\n")
    context = zmq.Context()
    subscriber = Subscriber(context, resolve_endpoint("capture", run_dir), FRAMES, latest=False)
    capture = subprocess.Popen([sys.executable, "-m", "nodes.capture", "--name", "capture", "--config",
                                str(tmp_path / "capture.yaml")], cwd=REPO, stderr=subprocess.PIPE, text=True)
    ids: list[int] = []
    try:
        while subscriber.socket.poll(200) or capture.poll() is None:  # until it exited and all is read
            ids += [r.message.frame_id for r in subscriber.receive()]
        stderr = capture.stderr.read()
    finally:
        stop_process(capture)
        subscriber.close()
        context.term()
    assert capture.returncode == 78, stderr
    assert "Traceback" not in stderr and len(error_lines(stderr)) == 1
    assert re.search(rf"drive.mcap: corrupt record at byte \d+ of {len(data)} \(CRCValidationError", stderr)
    # The damaged chunk holds frames 22..29; those before it play. The last one or two may still
    # be queued when the node exits (its sockets do not linger), so not all 21 need arrive.
    assert ids == list(range(1, len(ids) + 1)) and 15 <= len(ids) <= 21, ids


def test_an_mcap_magic_followed_by_garbage_exits_with_one_line(tmp_path, run_dir):
    (tmp_path / "bogus.mcap").write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 20)
    result = run_capture(tmp_path, "source: {kind: recording, path: bogus.mcap}\n")
    assert result.returncode == 78, result.stderr
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert "bogus.mcap: no complete MCAP header record after the magic" in result.stderr


def test_a_folder_of_undecodable_images_exits_with_one_line(tmp_path, run_dir):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.jpg").write_bytes(np.random.default_rng(i).bytes(2000))
    result = run_capture(tmp_path, "source: {kind: images, path: images}\nrate: max\n")
    assert result.returncode == 78, result.stderr
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert "images: none of its 4 images could be decoded (first: 0.jpg)" in result.stderr
