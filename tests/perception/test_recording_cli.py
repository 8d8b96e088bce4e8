"""`perception record`: bad sources and output folders are refused before anything starts, a disk
that fills up ends the run with one line and a readable file, frames that change size are all
recorded, and a run that fails or records nothing never leaves a file that passes for a drive."""

import json
import re
import resource

import cv2
import numpy as np
import pytest

from helpers import make_video, run_on_small_filesystem, run_python
from perception.messages import FrameHeader, FrameTransport
from perception.recording import RecordingWriter
from perception.recording_reader import RecordingReader
from perception.sources import write_frame_index


def record(*args: str, timeout_s: float = 120, **kwargs):
    return run_python(["-m", "perception.cli", "record", *map(str, args)], timeout_s=timeout_s, **kwargs)


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
    import foxglove.messages as fg

    with RecordingWriter(path, image_format="raw") as writer:
        for frame_id in range(1, good_frames + 2):
            height = 48 if frame_id <= good_frames else 24
            header = FrameHeader(frame_id=frame_id, capture_ns=frame_id, media_ns=(frame_id - 1) * 50_000_000,
                                 width=64, height=48, channels=3, transport=FrameTransport.INLINE)
            image = fg.RawImage(frame_id="camera", width=64, height=48, encoding="bgr8", step=64 * 3,
                                data=np.full((height, 64, 3), frame_id, np.uint8).tobytes())
            writer._write_image(header, image.encode(), log_time_ns=frame_id)  # as damage on disk would leave it


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


def test_frames_that_change_size_are_all_recorded_and_the_drive_replays(tmp_path):
    """A camera switching mode mid-drive: every frame is recorded at its own size (half of them used
    to be dropped, and `record` said `recorded 10 frames`), and the drive replays through the pipeline."""
    folder = tmp_path / "frames"
    folder.mkdir()
    sizes = [(120, 160)] * 6 + [(240, 320)] * 6 + [(120, 160)] * 3
    images = []
    for i, size in enumerate(sizes):
        image = np.random.default_rng(i).integers(0, 255, (*size, 3), np.uint8)
        write_frame_index(image, i)
        cv2.imwrite(str(folder / f"{i:03d}.png"), image)
        images.append(image)
    output = tmp_path / "out.mcap"
    result = record(output, "--source", folder, "--frames-only", "--image-format", "raw")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"recorded 15 frames of {folder} to {output}" in result.stdout
    recorded = list(RecordingReader(output).frames())
    assert [h.frame_id for h, _ in recorded] == list(range(1, 16))
    assert all(np.array_equal(pixels, image) for (_, pixels), image in zip(recorded, images))
    saved = tmp_path / "decisions.jsonl"
    replay = run_python(["-m", "perception.cli", "replay", str(output), "--speed", "max", "--save", str(saved)],
                        timeout_s=180)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert "frames change size at frame 7: 160x120 -> 320x240" in replay.stderr
    assert [json.loads(line)["frame_id"] for line in saved.read_text().splitlines()] == list(range(1, 16))


def _missing_folder(tmp_path):
    return tmp_path / "nope" / "out.mcap", [], f"record: {tmp_path / 'nope'}: no such folder"


def _too_little_free_space(tmp_path):
    return (tmp_path / "out.mcap", ["--min-free-mb", "100000000"],
            re.compile(rf"record: {re.escape(str(tmp_path))}: [0-9.]+ MB free, less than the 100000000.0 MB a "
                       r"recording leaves free \(min_free_mb\)"))


@pytest.mark.parametrize("make_output", [_missing_folder, _too_little_free_space])
def test_an_output_folder_that_cannot_take_a_recording_is_one_line_and_nothing_starts(tmp_path, make_output):
    output, extra, message = make_output(tmp_path)
    result = record(output, "--source", make_video(tmp_path / "clip.avi", frames=5), *extra, timeout_s=60)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert (message.fullmatch(line) if isinstance(message, re.Pattern) else line == message), line
    assert "started capture" not in result.stderr and not output.exists()


def test_a_read_only_output_folder_is_one_line_before_anything_starts(tmp_path):
    """It used to be found by the recorder, the run going on without it to the end of the source."""
    folder = tmp_path / "drives"
    video = make_video(tmp_path / "clip.avi", frames=5)
    result, _ = run_on_small_filesystem(["-m", "perception.cli", "record", str(folder / "out.mcap"), "--source",
                                         str(video), "--frames-only"], folder, size_mb=4, read_only=True, timeout_s=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"record: {folder}: cannot write there (Read-only file system)"


@pytest.mark.parametrize("min_free_mb, why", [(4, "out of space on {folder}"),
                                              (0, "the recorder could not write {output}")],
                         ids=["keeps-its-reserve", "disk-full"])
def test_a_disk_that_fills_up_ends_the_run_with_one_line_and_a_readable_file(tmp_path, min_free_mb, why):
    """An 8 MB disk and 0.9 MB frames. With a reserve the recorder ends the file, summary and all,
    when less is left; with none the write the disk refuses (ENOSPC) is cut off and the file ended
    after its last complete chunk. Either way: one line, exit 1, no restart into NAME-1.mcap, and the
    run ends then, not when the 10 s source does. It used to print `recorded 5 frames` and exit 0."""
    folder = tmp_path / "drives"
    output = folder / "out.mcap"
    video = make_video(tmp_path / "clip.avi", frames=200, size=(640, 480), noise=True)
    result, after = run_on_small_filesystem(["-m", "perception.cli", "record", str(output), "--source", str(video),
                                             "--frames-only", "--image-format", "raw", "--min-free-mb", str(min_free_mb)],
                                            folder, size_mb=8)
    assert_the_run_ended_with_one_line(result, output, why.format(folder=folder, output=output), after)


def test_a_recorder_whose_writes_are_refused_ends_the_run_instead_of_a_restart_loop(tmp_path):
    """The same without a small filesystem: a file-size limit (RLIMIT_FSIZE, EFBIG) refuses the
    recorder's writes. It used to crash (tracebacks), restart into empty NAME-1, NAME-2 files and
    report the run as recorded."""
    output = tmp_path / "out.mcap"
    video = make_video(tmp_path / "clip.avi", frames=200, size=(320, 240), noise=True)
    limit = 4 << 20  # above the capture node's ring (8 slots of 230 KB), below 200 raw frames
    result = record(output, "--source", video, "--frames-only", "--image-format", "raw",
                    preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert_the_run_ended_with_one_line(result, output, f"the recorder could not write {output}", tmp_path,
                                       others={"clip.avi"})
    assert "File too large" in result.stderr


def assert_the_run_ended_with_one_line(result, output, why: str, folder, others=frozenset()) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "recorded" not in result.stdout and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    kept = re.fullmatch(rf"record: failed: {re.escape(why)} \(see the log above\); the (\d+) frames recorded before "
                        rf"it are in {re.escape(str(output))}", last)
    assert kept, last
    assert "recorder exited with code 74: cannot write its output, not restarting" in result.stderr
    assert "restarting in" not in result.stderr and "source ended" not in result.stderr  # ended at once, not retried
    assert {p.name for p in folder.iterdir()} == {output.name, *others}  # no empty NAME-1.mcap beside it
    reader = RecordingReader(folder / output.name)
    assert [h.frame_id for h, _ in reader.frames()] == list(range(1, int(kept.group(1)) + 1))
    assert int(kept.group(1)) >= 2 and not reader.truncated
