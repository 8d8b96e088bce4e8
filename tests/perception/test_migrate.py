"""`perception migrate`: a drive recorded by an earlier build (wire format 4, base64 JSON images, log
times on the recording host's monotonic clock) in the current format, every message and JPEG kept."""

import base64
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from perception import REPO
from perception.codec import encode, json_schema
from perception.messages import WIRE_VERSION, Action, Decision, FrameHeader, FrameTransport, Reason
from perception.recording import RecordingError
from perception.recording_reader import RecordingReader
from perception.topics import DECISIONS, FRAMES

pytest.importorskip("mcap")

BOOT_NS = 5_000_000_000_000  # log times of the old run: 5000 s after its host booted


def wire4(message) -> bytes:  # noqa: ANN001 - a Message
    """The message as wire format 4 wrote it: no `clock` (format 5 added it)."""
    data = json.loads(encode(message))
    del data["clock"]
    data["wire"] = 4
    return json.dumps(data).encode()


def schema4(message_type) -> bytes:  # noqa: ANN001
    schema = json_schema(message_type)
    schema["properties"]["wire"] = {"const": 4}
    return json.dumps(schema).encode()


def old_channel(writer, topic: str, message_type) -> int:  # noqa: ANN001
    """A topic channel as an earlier build registered it: JSON, its wire-format-4 schema."""
    return writer.register_channel(topic, "json", writer.register_schema(
        f"perception.{message_type.__name__}", "jsonschema", schema4(message_type)))


def write_old_recording(path, frames: int = 3) -> list[bytes]:  # noqa: ANN001
    """A recording as an earlier build wrote it; returns its JPEGs."""
    from mcap.writer import Writer

    jpegs = []
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        frames_channel = old_channel(writer, "/frames", FrameHeader)
        image_channel = writer.register_channel("/camera/image", "json", writer.register_schema(
            "foxglove.CompressedImage", "jsonschema", b'{"type": "object"}'))
        decisions = old_channel(writer, "/decisions", Decision)
        for i in range(1, frames + 1):
            pixels = np.full((48, 64, 3), 40 * i, np.uint8)
            jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
            jpegs.append(jpeg)
            header = FrameHeader(frame_id=i, capture_ns=BOOT_NS + i * 100_000_000, media_ns=(i - 1) * 100_000_000,
                                 width=64, height=48, channels=3, transport=FrameTransport.SHM, ring="r", slot=i, seq=i)
            log_time = header.capture_ns + 1_000_000
            writer.add_message(frames_channel, log_time=log_time, publish_time=header.capture_ns, data=wire4(header), sequence=i)
            image = {"timestamp": {"sec": 0, "nsec": header.media_ns}, "frame_id": "camera", "format": "jpeg",
                     "data": base64.b64encode(jpeg).decode()}
            writer.add_message(image_channel, log_time=log_time, publish_time=header.capture_ns,
                               data=json.dumps(image).encode(), sequence=i)
            decision = Decision(frame_id=i, capture_ns=header.capture_ns, action=Action.PROCEED, reason=Reason.CLEAR,
                                decided_by="decision")
            writer.add_message(decisions, log_time=header.capture_ns + 20_000_000, publish_time=header.capture_ns,
                               data=wire4(decision), sequence=i)
        writer.finish()
    os.utime(path, ns=(1_780_000_000 * 10**9, 1_780_000_000 * 10**9))  # the file last written at this Unix time
    return jpegs


def test_an_older_recording_is_refused_by_replay_and_converted_by_migrate(tmp_path):
    old, new = tmp_path / "old.mcap", tmp_path / "new.mcap"
    jpegs = write_old_recording(old)
    with pytest.raises(RecordingError, match=f"recorded in wire format 4; this build reads wire format {WIRE_VERSION} "
                                             r"\(perception migrate converts it\)"):
        list(RecordingReader(old).frames())
    result = subprocess.run([sys.executable, "-m", "perception.cli", "migrate", str(old), str(new)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f"{new}: 3 frames, ")

    reader = RecordingReader(new)
    frames = list(reader.encoded_frames())
    assert [raw for _, _, raw in frames] == jpegs  # byte for byte
    assert reader.channel_schemas["/camera/image"][0] == "protobuf"
    messages = list(RecordingReader(new).messages({FRAMES, DECISIONS}))
    assert [(t.name, m.frame_id, m.clock) for t, _, m in messages] == [
        (name, i, "local") for i in (1, 2, 3) for name in ("/frames", "/decisions")]
    # Unix time: the last message at the file's modification time, every difference kept.
    times = [log_time for _, log_time, _ in messages]
    assert times[-1] == 1_780_000_000 * 10**9
    assert [b - a for a, b in zip(times, times[1:])] == [19_000_000, 81_000_000, 19_000_000, 81_000_000, 19_000_000]


def test_a_recording_already_current_migrates_to_the_same_messages_and_frames(tmp_path):
    source = REPO / "recordings" / "udacity_approach.mcap"
    new = tmp_path / "again.mcap"
    result = subprocess.run([sys.executable, "-m", "perception.cli", "migrate", str(source), str(new)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [(t, m) for t, _, m in RecordingReader(new).messages()] == [(t, m) for t, _, m in RecordingReader(source).messages()]
    assert [(h, raw) for h, _, raw in RecordingReader(new).encoded_frames()] == \
        [(h, raw) for h, _, raw in RecordingReader(source).encoded_frames()]
    # Its log times already Unix time: kept as they were.
    assert [t for _, t, _ in RecordingReader(new).messages()] == [t for _, t, _ in RecordingReader(source).messages()]


def test_migrating_a_current_recording_keeps_its_publish_times_and_latencies(tmp_path):
    from mcap.reader import make_reader

    def times(path):  # noqa: ANN001, ANN202
        with open(path, "rb") as f:
            return [(c.topic, m.log_time, m.publish_time, m.data if c.topic == "/latency" else b"")
                    for _, c, m in make_reader(f).iter_messages(log_time_order=False)]

    source, new = REPO / "recordings" / "udacity_approach.mcap", tmp_path / "again.mcap"
    subprocess.run([sys.executable, "-m", "perception.cli", "migrate", str(source), str(new)], check=True,
                   capture_output=True, timeout=120)
    assert times(new) == times(source)


def test_a_raw_recording_migrates_to_raw_frames(tmp_path):
    """Its first message a topic, as a pipeline recording's is: the image format comes from its images."""
    from mcap.writer import Writer

    old, new = tmp_path / "old.mcap", tmp_path / "new.mcap"
    pixels = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    with open(old, "wb") as f:
        writer = Writer(f)
        writer.start()
        decisions = old_channel(writer, "/decisions", Decision)
        frames = old_channel(writer, "/frames", FrameHeader)
        images = writer.register_channel("/camera/image", "json", writer.register_schema(
            "foxglove.RawImage", "jsonschema", b'{"type": "object"}'))
        writer.add_message(decisions, log_time=BOOT_NS, publish_time=BOOT_NS, data=wire4(Decision(
            frame_id=1, capture_ns=BOOT_NS, action=Action.BRAKE, reason=Reason.DEADLINE_MISS, decided_by="watchdog")))
        header = FrameHeader(frame_id=1, capture_ns=BOOT_NS, media_ns=0, width=64, height=48, channels=3,
                             transport=FrameTransport.INLINE)
        writer.add_message(frames, log_time=BOOT_NS + 1, publish_time=BOOT_NS, data=wire4(header))
        image = {"width": 64, "height": 48, "encoding": "bgr8", "step": 192, "data": base64.b64encode(pixels.tobytes()).decode()}
        writer.add_message(images, log_time=BOOT_NS + 1, publish_time=BOOT_NS, data=json.dumps(image).encode())
        writer.finish()
    result = subprocess.run([sys.executable, "-m", "perception.cli", "migrate", str(old), str(new)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ((_, migrated),) = list(RecordingReader(new).frames())
    assert np.array_equal(migrated, pixels)


@pytest.mark.parametrize("image", [b'{"format": "jpeg"}', b"[1, 2]"], ids=["no-data", "a-list"])
def test_an_old_recording_it_cannot_convert_is_one_line_and_leaves_no_output(tmp_path, image):
    from mcap.writer import Writer

    old, new = tmp_path / "old.mcap", tmp_path / "new.mcap"
    with open(old, "wb") as f:
        writer = Writer(f)
        writer.start()
        frames = old_channel(writer, "/frames", FrameHeader)
        images = writer.register_channel("/camera/image", "json", 0)
        header = FrameHeader(frame_id=1, capture_ns=BOOT_NS, media_ns=0, width=64, height=48, channels=3,
                             transport=FrameTransport.INLINE)
        writer.add_message(frames, log_time=BOOT_NS, publish_time=BOOT_NS, data=wire4(header))
        writer.add_message(images, log_time=BOOT_NS, publish_time=BOOT_NS, data=image)
        writer.finish()
    result = subprocess.run([sys.executable, "-m", "perception.cli", "migrate", str(old), str(new)],
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"migrate: recording {old}: "), result.stderr
    assert not new.exists()


def test_a_recording_cut_short_migrates_up_to_its_last_chunk_and_says_so_once(tmp_path):
    data = (REPO / "recordings" / "udacity_approach.mcap").read_bytes()
    cut, new = tmp_path / "cut.mcap", tmp_path / "again.mcap"
    cut.write_bytes(data[: len(data) * 2 // 3])  # a recorder killed two thirds of the way
    result = subprocess.run([sys.executable, "-m", "perception.cli", "migrate", str(cut), str(new)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ends mid-record") == 1, result.stderr
    frames = sum(1 for _ in RecordingReader(new).encoded_frames())
    assert 0 < frames < 60
