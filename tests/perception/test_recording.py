import base64
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import REPO, wait_for
from perception.messages import FrameHeader, FrameTransport
from perception.recording import (
    TOPIC_TYPES, RecordingError, RecordingReader, RecordingWriter, decode_message, message_to_dict,
)
from perception.sources import read_frame_index, write_frame_index
from samples import all_messages


def header(i: int, width=64, height=48) -> FrameHeader:
    return FrameHeader(frame_id=i, capture_ns=1000 + i, media_ns=i * 40_000_000, width=width, height=height, channels=3,
                       transport=FrameTransport.SHM, ring="perception-test-capture-1", slot=i % 8, seq=i + 1)


def frame(i: int, width=64, height=48) -> np.ndarray:
    image = np.random.default_rng(i).integers(0, 255, (height, width, 3), np.uint8)
    write_frame_index(image, i)
    return image


@pytest.mark.parametrize("message", all_messages(), ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips_through_the_recording_json(message):
    topic = next(t for t, cls in TOPIC_TYPES.items() if isinstance(message, cls))
    assert decode_message(topic, json.dumps(message_to_dict(message)).encode()) == message


def test_raw_frames_come_back_exact_and_jpeg_frames_intact(tmp_path):
    for image_format in ("raw", "jpeg"):
        path = tmp_path / f"{image_format}.mcap"
        with RecordingWriter(path, image_format=image_format) as writer:
            for i in range(1, 6):
                writer.write_frame(header(i), frame(i), log_time_ns=i)
            writer.write("decisions", all_messages()[3], log_time_ns=9)
        reader = RecordingReader(path)
        frames = list(reader.frames())
        assert [h.frame_id for h, _ in frames] == [1, 2, 3, 4, 5] and not reader.truncated
        if image_format == "raw":
            assert all(np.array_equal(p, frame(h.frame_id)) for h, p in frames)
        else:
            assert all(read_frame_index(p) == h.frame_id for h, p in frames)
        assert [t for t, _, _ in reader.messages()] == ["frames"] * 5 + ["decisions"]


def test_a_file_cut_short_reads_up_to_its_last_complete_chunk(tmp_path):
    path = tmp_path / "full.mcap"
    with RecordingWriter(path, image_format="raw", chunk_size=20_000) as writer:
        for i in range(1, 21):
            writer.write_frame(header(i, 128, 96), frame(i, 128, 96), log_time_ns=i)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.5)])
    reader = RecordingReader(cut)
    ids = [h.frame_id for h, _ in reader.frames()]
    assert reader.truncated and 5 <= len(ids) < 20 and ids == list(range(1, len(ids) + 1))


def test_not_a_recording_and_missing_file_are_one_line_errors(tmp_path):
    bogus = tmp_path / "bogus.mcap"
    bogus.write_bytes(b"RIFF....AVI not mcap")
    with pytest.raises(RecordingError, match="bogus.mcap: not an MCAP file"):
        RecordingReader(bogus)
    with pytest.raises(RecordingError, match="nope.mcap: file not found"):
        RecordingReader(tmp_path / "nope.mcap")


BUNDLED = REPO / "recordings" / "udacity_dashcam.mcap"


def damaged(path: Path, source: Path, at: float, cut: float = 1.0) -> Path:
    """`source` with 16 bytes overwritten at fraction `at` of its length, kept up to fraction `cut`."""
    data = bytearray(source.read_bytes())
    offset = int(len(data) * at)
    data[offset : offset + 16] = bytes(range(0xA0, 0xB0))
    path.write_bytes(data[: int(len(data) * cut)])
    return path


def read_until_error(reader: RecordingReader) -> tuple[list[int], str]:
    ids: list[int] = []
    with pytest.raises(RecordingError) as error:
        for h, _ in reader.frames():
            ids.append(h.frame_id)
    return ids, str(error.value)


def test_damage_mid_file_plays_the_frames_before_it_then_is_an_error_naming_the_offset(tmp_path):
    """A recorder killed mid-run cuts a file short; 16 bytes overwritten mid-file is damage, not that."""
    reader = RecordingReader(damaged(tmp_path / "drive.mcap", BUNDLED, at=0.6))
    ids, error = read_until_error(reader)
    assert ids == list(range(1, 22))  # the three chunks before the damaged one
    assert re.fullmatch(r"recording \S+drive.mcap: corrupt record at byte \d+ of 5749263 \(CRCValidationError: .*\)", error)
    assert not reader.truncated


def test_damage_before_the_end_of_a_file_cut_short_is_still_an_error(tmp_path):
    ids, error = read_until_error(RecordingReader(damaged(tmp_path / "drive.mcap", BUNDLED, at=0.25, cut=0.8)))
    assert ids == list(range(1, 8)) and "corrupt record at byte" in error  # the frames of the first chunk


@pytest.mark.parametrize("after_magic", [b"", bytes(range(256)) * 20], ids=["nothing", "garbage"])
def test_an_mcap_magic_followed_by_no_header_is_an_error(tmp_path, after_magic):
    path = tmp_path / "bogus.mcap"
    path.write_bytes(b"\x89MCAP0\r\n" + after_magic)
    with pytest.raises(RecordingError, match=r"bogus.mcap: no complete MCAP header record after the magic"):
        list(RecordingReader(path).frames())


def write_mcap(path: Path, messages: list[tuple[str, bytes]]) -> Path:
    """A recording written with the mcap library itself, so its payloads can be anything."""
    from mcap.writer import Writer

    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        channels = {topic: writer.register_channel(topic, "json", 0) for topic in ("/frames", "/camera/image")}
        for i, (topic, data) in enumerate(messages):
            writer.add_message(channels[topic], log_time=i, data=data, publish_time=i)
        writer.finish()
    return path


def jpeg_image(i: int) -> bytes:
    encoded = cv2.imencode(".jpg", frame(i))[1].tobytes()
    return json.dumps({"format": "jpeg", "data": base64.b64encode(encoded).decode()}).encode()


def header_json(i: int) -> bytes:
    return json.dumps(message_to_dict(header(i))).encode()


@pytest.mark.parametrize("image, problem", [
    (b"\xff\xfe\x00", "UnicodeDecodeError"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"format": "jpeg"}', "missing field 'data'"),
    (b'{"format": "jpeg", "data": "not base64!"}', "Error: "),
    (b'{"format": "jpeg", "data": "AAAA"}', "not a decodable JPEG"),
    (b'{"format": "raw", "data": "AAAA", "width": 64, "height": 48, "step": 192}', "3 bytes of pixels, expected 9216"),
], ids=["utf8", "list", "no-data", "base64", "jpeg", "raw-size"])
def test_a_bad_image_message_is_an_error_naming_file_and_frame(tmp_path, image, problem):
    path = write_mcap(tmp_path / "bad.mcap", [("/frames", header_json(1)), ("/camera/image", jpeg_image(1)),
                                              ("/frames", header_json(2)), ("/camera/image", image)])
    ids, error = read_until_error(RecordingReader(path))
    assert ids == [1]
    assert error.startswith(f"recording {path}: bad image of frame 2 (") and problem in error


@pytest.mark.parametrize("frame_header", [b"\x00garbage", b'{"frame_id": 2}', b'{"frame_id": 2, "colour": 1}'],
                         ids=["not-json", "missing-fields", "unknown-field"])
def test_a_bad_frame_header_is_an_error_naming_file_and_message(tmp_path, frame_header):
    path = write_mcap(tmp_path / "bad.mcap", [("/frames", header_json(1)), ("/camera/image", jpeg_image(1)),
                                              ("/frames", frame_header), ("/camera/image", jpeg_image(2))])
    ids, error = read_until_error(RecordingReader(path))
    assert ids == [1] and error.startswith(f"recording {path}: bad frame header at log time 2 (")
    with pytest.raises(RecordingError, match=r"bad.mcap: bad frames message at log time 2 \("):
        list(RecordingReader(path).messages())


def run_recording(tmp_path, frames: int, width: int, height: int, rate: float, kill_recorder_after_s: float | None = None):
    output = tmp_path / "drive.mcap"
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom perception.launch import Launcher\n"
        "from perception.replay import pipeline_launch\n"
        f"spec = pipeline_launch({{'kind': 'synthetic', 'width': {width}, 'height': {height}, 'fps': {rate}, "
        f"'count': {frames}}}, rate={rate}, record_to='{output}', pipeline=False)\n"
        f"sys.exit(Launcher(spec, 'test', status_file=__import__('pathlib').Path('{tmp_path}/status.json')).run())\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    if kill_recorder_after_s is not None:
        status = wait_for(lambda: _recorder_pid(tmp_path / "status.json"), timeout_s=20)
        assert status, "recorder did not start"
        assert wait_for(lambda: output.exists() and output.stat().st_size > 2_000_000, timeout_s=20)
        os.kill(status, signal.SIGKILL)
    process.wait(timeout=120)
    return output, process


def _recorder_pid(path: Path):
    try:
        return next(n["pid"] for n in json.loads(path.read_text())["nodes"] if n["name"] == "recorder" and n["pid"])
    except (FileNotFoundError, json.JSONDecodeError, StopIteration):
        return None


def test_recorder_loses_no_frame_at_30fps_of_720p(tmp_path):
    output, process = run_recording(tmp_path, frames=90, width=1280, height=720, rate=30.0)
    assert process.returncode == 0, process.stderr.read()[-2000:]
    reader = RecordingReader(output)
    frames = [(h.frame_id, read_frame_index(p)) for h, p in reader.frames()]
    assert frames == [(i, i - 1) for i in range(1, 91)]  # count in = count out, in order, right pixels
    assert not reader.truncated


def test_a_recorder_killed_mid_run_leaves_a_readable_file(tmp_path):
    output, process = run_recording(tmp_path, frames=240, width=1280, height=720, rate=30.0, kill_recorder_after_s=1.0)
    reader = RecordingReader(output)
    ids = [h.frame_id for h, _ in reader.frames()]
    assert reader.truncated and len(ids) >= 5 and ids == list(range(1, len(ids) + 1))
    # The launcher restarted the recorder, which went on in a new file instead of overwriting this one.
    resumed = RecordingReader(output.with_name("drive-1.mcap"))
    later = [h.frame_id for h, _ in resumed.frames()]
    assert not resumed.truncated and later and later[0] > ids[-1] and later[-1] == 240


def test_the_bundled_drive_reads_with_the_standard_mcap_reader_as_foxglove_expects():
    """What Foxglove relies on: a summary, JSON-schema channels, foxglove.CompressedImage JPEGs."""
    import base64

    import cv2
    from mcap.reader import make_reader

    with open(REPO / "recordings" / "udacity_dashcam.mcap", "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        topics = {channel.topic: (channel.message_encoding, summary.schemas[channel.schema_id])
                  for channel in summary.channels.values()}
        assert {"/camera/image", "/frames", "/detections", "/decisions", "/watchdog", "/heartbeat"} <= set(topics)
        assert all(encoding == "json" and schema.encoding == "jsonschema" for encoding, schema in topics.values())
        assert topics["/camera/image"][1].name == "foxglove.CompressedImage"
        images = [json.loads(message.data) for _, _, message in reader.iter_messages(topics=["/camera/image"])]
    assert len(images) == 38 and all(image["format"] == "jpeg" for image in images)
    first = cv2.imdecode(np.frombuffer(base64.b64decode(images[0]["data"]), np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (720, 1280, 3)
