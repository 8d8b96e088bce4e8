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
from perception.messages import Action, Decision, FrameHeader, FrameTransport, Reason
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


def write_old_recording(path, frames: int = 3) -> list[bytes]:  # noqa: ANN001
    """A recording as an earlier build wrote it; returns its JPEGs."""
    from mcap.writer import Writer

    jpegs = []
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        frames_channel = writer.register_channel("/frames", "json", writer.register_schema(
            "perception.FrameHeader", "jsonschema", schema4(FrameHeader)))
        image_channel = writer.register_channel("/camera/image", "json", writer.register_schema(
            "foxglove.CompressedImage", "jsonschema", b'{"type": "object"}'))
        decisions = writer.register_channel("/decisions", "json", writer.register_schema(
            "perception.Decision", "jsonschema", schema4(Decision)))
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
    with pytest.raises(RecordingError, match="recorded in wire format 4; this build reads wire format 5 "
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
