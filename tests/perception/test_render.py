"""`perception render`: a recorded drive as a video with what the pipeline made of each frame."""

import json
import subprocess
import sys

import cv2
import numpy as np

from perception import REPO
from perception.render import ACTION_COLOURS
from perception.messages import Action

APPROACH = REPO / "recordings" / "udacity_approach.mcap"
REFERENCE = REPO / "recordings" / "udacity_approach.reference.jsonl"


def test_every_frame_is_written_at_the_recordings_rate_with_its_decision_as_the_banners_colour(tmp_path):
    out = tmp_path / "approach.mp4"
    result = subprocess.run([sys.executable, "-m", "perception.cli", "render", str(APPROACH), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{out}: 60 frames"
    video = cv2.VideoCapture(str(out))
    assert (video.get(cv2.CAP_PROP_FRAME_COUNT), video.get(cv2.CAP_PROP_FPS)) == (60, 10)
    actions = {row["frame_id"]: row["action"] for row in map(json.loads, REFERENCE.read_text().splitlines())}
    assert set(actions.values()) == {"PROCEED", "SLOW", "BRAKE"}
    for frame_id in range(1, 61):  # frame ids count from 1, in recorded order
        ok, image = video.read()
        assert ok and image.shape == (360, 640, 3)
        banner = image[2:8, 300:340].reshape(-1, 3).mean(0)  # under the banner's text, which starts at the left
        closest = min(ACTION_COLOURS, key=lambda a: np.abs(banner - ACTION_COLOURS[a]).sum())
        assert closest is Action[actions[frame_id]], f"frame {frame_id}: banner {banner}"


def test_a_file_that_is_no_recording_is_one_line(tmp_path):
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"not an mcap at all")
    result = subprocess.run([sys.executable, "-m", "perception.cli", "render", str(bad), str(tmp_path / "x.mp4")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [f"render: recording {bad}: not an MCAP file"])
    assert not (tmp_path / "x.mp4").exists()
