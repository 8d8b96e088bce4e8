"""`perception record`: bad sources are refused before anything starts, and a run that fails or
records nothing never leaves a file that passes for a drive."""

import re

import numpy as np
import pytest

from helpers import make_video, run_python
from perception.messages import FrameHeader, FrameTransport
from perception.recording import RecordingReader, RecordingWriter


def record(*args: str, timeout_s: float = 120):
    return run_python(["-m", "perception.cli", "record", *map(str, args)], timeout_s=timeout_s)


def recorded_ids(path) -> list[int]:
    return [header.frame_id for header, _ in RecordingReader(path).frames()]


def _missing_file(tmp_path):
    path = tmp_path / "nonexistent.mp4"
    return path, f"record: video {path}: file not found"


def _unreadable_video(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_text("not a video\n")
    return path, f"record: video {path}: cannot open (corrupt or unsupported container/codec)"


def _empty_image_folder(tmp_path):
    path = tmp_path / "frames"
    path.mkdir()
    (path / "notes.txt").write_text("no images here\n")
    return path, f"record: image folder {path}: no images (.jpg, .jpeg, .png, .bmp, .ppm, .pgm, .tif, .tiff, .webp)"


def _not_a_recording(tmp_path):
    path = tmp_path / "drive.mcap"
    path.write_bytes(b"RIFF....AVI not mcap")
    return path, f"record: recording {path}: not an MCAP file"


@pytest.mark.parametrize("make_source", [_missing_file, _unreadable_video, _empty_image_folder, _not_a_recording])
def test_a_bad_source_is_one_line_naming_it_and_nothing_starts_or_is_written(tmp_path, make_source):
    source, message = make_source(tmp_path)
    output = tmp_path / "out.mcap"
    result = record(output, "--source", source, timeout_s=60)
    assert result.returncode == 2
    # The last line is ours; a video library may print its own complaint before it.
    assert result.stderr.strip().splitlines()[-1] == message
    assert "started capture" not in result.stderr  # refused before the launcher started any node
    assert "recorded" not in result.stdout
    assert not output.exists()


def test_an_existing_output_is_refused_and_left_alone(tmp_path):
    output = tmp_path / "out.mcap"
    output.write_bytes(b"an earlier drive")
    result = record(output, "--source", make_video(tmp_path / "clip.avi", frames=5), "--frames-only", timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"record: {output} exists; remove it or choose another name"
    assert output.read_bytes() == b"an earlier drive"


def test_a_video_is_recorded_frame_for_frame(tmp_path):
    output = tmp_path / "out.mcap"
    video = make_video(tmp_path / "clip.avi", frames=12)
    result = record(output, "--source", video, "--frames-only")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"recorded 12 frames of {video} to {output}" in result.stdout
    assert recorded_ids(output) == list(range(1, 13))


def write_recording_with_a_damaged_frame(path, good_frames: int) -> None:
    """Frames 1..good_frames are fine; the next one's pixels are half as many bytes as its header
    says, as in a recording damaged on disk, so a capture node reading it fails there."""
    with RecordingWriter(path, image_format="raw") as writer:
        for frame_id in range(1, good_frames + 2):
            height = 48 if frame_id <= good_frames else 24
            header = FrameHeader(frame_id=frame_id, capture_ns=frame_id, media_ns=(frame_id - 1) * 50_000_000,
                                 width=64, height=48, channels=3, transport=FrameTransport.INLINE)
            writer.write_frame(header, np.full((height, 64, 3), frame_id, np.uint8), log_time_ns=frame_id)


def test_a_run_that_fails_midway_says_so_and_keeps_only_what_it_recorded(tmp_path):
    source = tmp_path / "damaged.mcap"
    write_recording_with_a_damaged_frame(source, good_frames=10)
    output = tmp_path / "out.mcap"
    result = record(output, "--source", source, "--frames-only")
    assert result.returncode != 0
    assert "recorded" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(r"record: failed: capture exited with code \d+ \(see the log above\); ", last), last
    # Ten frames were sent over half a second before the failure: the recorder has written them (all
    # or the first N), and the message says how many.
    kept = re.search(r"the (\d+) frames recorded before it are in (.+)$", last)
    assert kept, last
    assert kept.group(2) == str(output)
    assert recorded_ids(output) == list(range(1, int(kept.group(1)) + 1))


def test_a_run_that_records_no_frame_fails_and_leaves_no_file(tmp_path):
    """Image names, but not images: the folder opens, then the capture node fails on its first read."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_text("not an image\n")
    output = tmp_path / "out.mcap"
    result = record(output, "--source", folder, "--frames-only")
    assert result.returncode != 0
    assert f"image folder {folder}: none of its 2 images could be decoded" in result.stderr  # the capture node's line
    assert re.fullmatch(r"record: failed: capture exited with code \d+ \(see the log above\); nothing was recorded",
                        result.stderr.strip().splitlines()[-1])
    assert "recorded" not in result.stdout
    assert not output.exists()  # the recorder had opened it: an empty file is not left to pass for a drive
