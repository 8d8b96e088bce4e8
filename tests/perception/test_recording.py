import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import REPO, run_python, wait_for
from perception.messages import WIRE_VERSION, FrameHeader, FrameTransport
from perception.codec import encode, json_schema
from perception.latency import now_ns
from perception.recording import RecordingError, RecordingWriter
from perception.recording_reader import RecordingReader, protobuf_class
from perception.sources import read_frame_index, write_frame_index
from perception.topics import DECISIONS, FRAMES, TOPICS
from samples import all_messages


def header(i: int, width=64, height=48) -> FrameHeader:
    return FrameHeader(frame_id=i, capture_ns=1000 + i, media_ns=i * 40_000_000, width=width, height=height, channels=3,
                       transport=FrameTransport.SHM, ring="perception-test-capture-1", slot=i % 8, seq=i + 1)


def frame(i: int, width=64, height=48) -> np.ndarray:
    image = np.random.default_rng(i).integers(0, 255, (height, width, 3), np.uint8)
    write_frame_index(image, i)
    return image


def topic_of(message):
    return next(t for t in TOPICS if isinstance(message, t.message_type))


def test_every_message_type_round_trips_through_a_recording_as_its_wire_bytes(tmp_path):
    path = tmp_path / "all.mcap"
    sent = all_messages()
    with RecordingWriter(path) as writer:
        for i, message in enumerate(sent):
            writer.write(topic_of(message), message, log_time_ns=1_000_000 + i)
    read = list(RecordingReader(path).messages())
    assert [(t, m) for t, _, m in read] == [(topic_of(m), m) for m in sent]
    # Log times in Unix ns: this host's clock plus one offset, measured as the recording began.
    assert [log_time for _, log_time, _ in read] == [1_000_000 + i + writer.wall_offset_ns for i in range(len(sent))]
    assert abs(writer.wall_offset_ns + now_ns() - time.time_ns()) < 1_000_000_000
    # The very bytes of the wire, on the topic's own channel: one codec for both.
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        stored = [(channel.topic, message.data) for _, channel, message in make_reader(f).iter_messages()
                  if channel.topic.startswith(("/frames", "/detections", "/decisions", "/watchdog", "/heartbeat"))]
    assert stored == [(topic_of(m).name, encode(m)) for m in sent]


def test_reading_one_topic_skips_the_others_and_the_view_channels(tmp_path):
    path = tmp_path / "some.mcap"
    with RecordingWriter(path) as writer:
        for i, message in enumerate(all_messages()):
            writer.write(topic_of(message), message, log_time_ns=1_000_000 + i)
    decisions = [m for m in all_messages() if topic_of(m) is DECISIONS]
    assert [m for _, _, m in RecordingReader(path).messages({DECISIONS})] == decisions


def test_a_message_on_the_wrong_topic_is_refused(tmp_path):
    with RecordingWriter(tmp_path / "wrong.mcap") as writer:
        with pytest.raises(TypeError, match="/frames carries FrameHeader, not Decision"):
            writer.write(FRAMES, all_messages()[3], log_time_ns=1)


def test_raw_frames_come_back_exact_and_jpeg_frames_intact(tmp_path):
    for image_format in ("raw", "jpeg"):
        path = tmp_path / f"{image_format}.mcap"
        with RecordingWriter(path, image_format=image_format) as writer:
            for i in range(1, 6):
                writer.write_frame(header(i), frame(i), log_time_ns=i)
            writer.write(DECISIONS, all_messages()[3], log_time_ns=9)
        reader = RecordingReader(path)
        frames = list(reader.frames())
        assert [h.frame_id for h, _ in frames] == [1, 2, 3, 4, 5] and not reader.truncated
        if image_format == "raw":
            assert all(np.array_equal(p, frame(h.frame_id)) for h, p in frames)
        else:
            assert all(read_frame_index(p) == h.frame_id for h, p in frames)
        assert [t.name for t, _, _ in reader.messages()] == ["/frames"] * 5 + ["/decisions"]


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


def test_a_missing_codec_is_named_as_such_not_as_a_corrupt_recording(tmp_path, monkeypatch):
    import mcap.stream_reader
    import mcap.writer

    path = tmp_path / "zstd.mcap"
    with RecordingWriter(path) as writer:  # zstd, the default
        writer.write_frame(header(1), frame(1), log_time_ns=1)
    monkeypatch.setattr(mcap.stream_reader, "zstandard", None)  # as in a Python without the package
    with pytest.raises(RecordingError) as error:
        list(RecordingReader(path).frames())
    assert "zstd.mcap: its MCAP chunks need the zstandard package" in str(error.value)
    assert "corrupt" not in str(error.value)
    # Writing: refused before the file is made, not at the first chunk; mcap's writer is asked, since
    # a package that is installed but does not import is missing to it.
    monkeypatch.setattr(mcap.writer, "lz4", None)
    with pytest.raises(RecordingError, match="lz4.mcap: its MCAP chunks need the lz4 package"):
        RecordingWriter(tmp_path / "lz4.mcap", compression="lz4")
    assert not (tmp_path / "lz4.mcap").exists()


def test_not_a_recording_and_missing_file_are_one_line_errors(tmp_path):
    bogus = tmp_path / "bogus.mcap"
    bogus.write_bytes(b"RIFF....AVI not mcap")
    with pytest.raises(RecordingError, match="bogus.mcap: not an MCAP file"):
        RecordingReader(bogus)
    with pytest.raises(RecordingError, match="nope.mcap: file not found"):
        RecordingReader(tmp_path / "nope.mcap")


WRITE_UNTIL_REFUSED = """
import resource, sys
import numpy as np
from perception.messages import FrameHeader, FrameTransport
from perception.recording import RecordingWriteError, RecordingWriter

resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
writer = RecordingWriter(sys.argv[1], image_format="raw", chunk_size=20_000)
for i in range(1, 1000):
    header = FrameHeader(frame_id=i, capture_ns=i, media_ns=i, width=128, height=96, channels=3,
                         transport=FrameTransport.INLINE)
    try:
        # Noise: zstd leaves it its size, so the limit is reached within a few dozen frames.
        writer.write_frame(header, np.random.default_rng(i).integers(0, 256, (96, 128, 3), np.uint8), log_time_ns=i)
    except RecordingWriteError as exc:
        print(i, exc)
        break
writer.close()  # as the recorder does on its way out: nothing more to do
"""


def test_a_write_the_disk_refuses_ends_the_file_readable_up_to_its_last_complete_chunk(tmp_path):
    """A full disk mid-chunk: the partial chunk is cut off and the file ended after the chunk before
    it, so every frame written until then reads, and nothing is left to write later. Here the disk's
    refusal is a file-size limit (RLIMIT_FSIZE: EFBIG), which needs no privileges; ENOSPC takes the
    same path (tests/perception/test_recording_cli.py, on a small filesystem)."""
    path, limit = tmp_path / "drive.mcap", 600_000
    result = run_python(["-c", WRITE_UNTIL_REFUSED, str(path), str(limit)])
    assert result.returncode == 0, result.stderr[-2000:]
    refused_at, message = result.stdout.split(" ", 1)
    assert message.strip() == f"recording {path}: cannot write (File too large); ended after its last complete chunk"
    assert path.stat().st_size <= limit and path.read_bytes().endswith(b"\x89MCAP0\r\n")  # finished, not cut short
    reader = RecordingReader(path)
    frames = list(reader.frames())
    assert not reader.truncated and 5 <= len(frames) < int(refused_at)
    assert [h.frame_id for h, _ in frames] == list(range(1, len(frames) + 1))
    assert all(np.array_equal(p, np.random.default_rng(h.frame_id).integers(0, 256, (96, 128, 3), np.uint8))
               for h, p in frames)


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


def chunks(path: Path) -> list[tuple[int, int, list[int]]]:
    """(start, end, ids of the frames whose image it holds) per chunk, read with the mcap library itself."""
    from mcap.records import Channel, Chunk, Message as McapMessage
    from mcap.stream_reader import StreamReader, breakup_chunk

    found, image_channels = [], set()
    with open(path, "rb") as f:
        records = iter(StreamReader(f, emit_chunks=True).records)
        while True:
            start = f.tell()
            record = next(records, None)
            if record is None:
                return found
            if isinstance(record, Channel) and record.topic == "/camera/image":
                image_channels.add(record.id)
            if isinstance(record, Chunk):
                inside = breakup_chunk(record)
                image_channels |= {r.id for r in inside if isinstance(r, Channel) and r.topic == "/camera/image"}
                found.append((start, f.tell(), [r.sequence for r in inside
                                                if isinstance(r, McapMessage) and r.channel_id in image_channels]))


def damaged_chunk(source: Path, at: float) -> tuple[int, list[int]]:
    """Where the chunk holding byte `at` of `source` starts, and the frames of the chunks before it."""
    offset = int(source.stat().st_size * at)
    layout = chunks(source)
    index = next(i for i, (start, end, _) in enumerate(layout) if start <= offset < end)  # damage in a chunk
    return layout[index][0], [i for _, _, ids in layout[:index] for i in ids]


def test_damage_mid_file_plays_the_frames_before_it_then_is_an_error_naming_the_offset(tmp_path):
    """A recorder killed mid-run cuts a file short; 16 bytes overwritten mid-file is damage, not that."""
    reader = RecordingReader(damaged(tmp_path / "drive.mcap", BUNDLED, at=0.6))
    ids, error = read_until_error(reader)
    chunk_start, before = damaged_chunk(BUNDLED, at=0.6)
    assert len(before) >= 10 and ids == before == list(range(1, len(before) + 1))  # the chunks before the damaged one
    size = BUNDLED.stat().st_size
    assert re.fullmatch(rf"recording \S+drive.mcap: corrupt record at byte {chunk_start} of {size} "
                        r"\(CRCValidationError: .*\)", error)
    assert not reader.truncated


def test_damage_before_the_end_of_a_file_cut_short_is_still_an_error(tmp_path):
    ids, error = read_until_error(RecordingReader(damaged(tmp_path / "drive.mcap", BUNDLED, at=0.4, cut=0.8)))
    chunk_start, before = damaged_chunk(BUNDLED, at=0.4)
    assert before and ids == before and f"corrupt record at byte {chunk_start} of " in error


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
    return encode(header(i))


@pytest.mark.parametrize("image, problem", [
    (b"\xff\xfe\x00", "UnicodeDecodeError"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"format": "jpeg"}', "missing field 'data'"),
    (b'{"format": "jpeg", "data": "not base64!"}', "Error: "),
    (b'{"format": "jpeg", "data": "AAAA"}', "a JPEG that does not decode"),
    (b'{"format": "raw", "data": "AAAA", "width": 64, "height": 48, "step": 192}', "3 bytes of pixels, expected 9216"),
], ids=["utf8", "list", "no-data", "base64", "jpeg", "raw-size"])
def test_a_bad_image_message_is_an_error_naming_file_and_frame(tmp_path, image, problem):
    path = write_mcap(tmp_path / "bad.mcap", [("/frames", header_json(1)), ("/camera/image", jpeg_image(1)),
                                              ("/frames", header_json(2)), ("/camera/image", image)])
    ids, error = read_until_error(RecordingReader(path))
    assert ids == [1]
    assert error.startswith(f"recording {path}: bad image of frame 2 (") and problem in error


@pytest.mark.parametrize("frame_header", [
    b"\x00garbage", b'{"wire": %d, "type": "FrameHeader", "frame_id": 2}' % WIRE_VERSION,
    encode(header(2))[:-1] + b',"colour":1}', encode(all_messages()[3]),
    encode(header(2)).replace(b'"wire":%d' % WIRE_VERSION, b'"wire":%d' % (WIRE_VERSION - 1)),
], ids=["not-json", "missing-fields", "unknown-field", "a-decision", "old-wire-version"])
def test_a_bad_frame_header_is_an_error_naming_file_and_message(tmp_path, frame_header):
    path = write_mcap(tmp_path / "bad.mcap", [("/frames", header_json(1)), ("/camera/image", jpeg_image(1)),
                                              ("/frames", frame_header), ("/camera/image", jpeg_image(2))])
    ids, error = read_until_error(RecordingReader(path))
    assert ids == [1] and error.startswith(f"recording {path}: bad frame header at log time 2 (")
    with pytest.raises(RecordingError, match=r"bad.mcap: bad /frames message at log time 2 \("):
        list(RecordingReader(path).messages())


@pytest.mark.parametrize("wire", [None, WIRE_VERSION - 1, WIRE_VERSION + 1], ids=["before-json", "older", "newer"])
def test_a_drive_recorded_in_another_wire_format_is_one_line_before_any_frame(tmp_path, wire):
    """A drive recorded by another build: its topic channels' schemas say which format it speaks."""
    from mcap.writer import Writer

    schema = {"title": "perception.FrameHeader", "type": "object", "properties": {"frame_id": {}}}  # as before wire 4
    if wire is not None:
        schema["properties"]["wire"] = {"const": wire}
    path = tmp_path / "old.mcap"
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        channel = writer.register_channel("/frames", "json", writer.register_schema(
            "perception.FrameHeader", "jsonschema", json.dumps(schema).encode()))
        writer.add_message(channel, log_time=1, data=b'{"frame_id": 1}', publish_time=1)
        writer.finish()
    found = "in an older message format" if wire is None else f"in wire format {wire}"
    with pytest.raises(RecordingError) as error:
        list(RecordingReader(path).frames())
    assert str(error.value) == (f"recording {path}: /frames was recorded {found}; this build reads wire format "
                                f"{WIRE_VERSION} (perception migrate converts it)")


def run_recording(tmp_path, frames: int, width: int, height: int, rate: float, kill_recorder_after_s: float | None = None):
    output = tmp_path / "drive.mcap"
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom perception.launch import Launcher\n"
        "from perception.pipeline import pipeline_launch\n"
        f"spec = pipeline_launch({{'kind': 'synthetic', 'width': {width}, 'height': {height}, 'fps': {rate}, "
        f"'count': {frames}}}, rate={rate}, record_to='{output}', pipeline=False, "
        "recorder_params={'chunk_size_kb': 256})\n"  # chunks of a few frames: a kill finds several complete
        f"sys.exit(Launcher(spec, 'test', status_file=__import__('pathlib').Path('{tmp_path}/status.json')).run())\n"
    )
    process = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    if kill_recorder_after_s is not None:
        status = wait_for(lambda: _recorder_pid(tmp_path / "status.json"), timeout_s=20)
        assert status, "recorder did not start"
        assert wait_for(lambda: output.exists() and output.stat().st_size > 1_000_000, timeout_s=20)
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


TOPIC_SCHEMAS = {  # what the bundled drive and every new recording declare, channel by channel
    "/frames": ("json", "perception.FrameHeader", "jsonschema"),
    "/detections": ("json", "perception.Detections", "jsonschema"),
    "/decisions": ("json", "perception.Decision", "jsonschema"),
    "/watchdog/status": ("json", "perception.WatchdogStatus", "jsonschema"),
    "/watchdog/control": ("json", "perception.Control", "jsonschema"),
    "/heartbeat": ("json", "perception.Heartbeat", "jsonschema"),
    "/camera/image": ("protobuf", "foxglove.CompressedImage", "protobuf"),
    "/camera/annotations": ("protobuf", "foxglove.ImageAnnotations", "protobuf"),
    "/latency": ("json", "perception.Latency", "jsonschema"),
    "/log": ("protobuf", "foxglove.Log", "protobuf"),
}


def mcap_messages(path: Path) -> tuple[dict, list]:
    """(channel -> (message encoding, schema), [(channel, log_time, message record)]) by the mcap library's reader."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        channels = {c.topic: (c.message_encoding, summary.schemas[c.schema_id]) for c in summary.channels.values()}
        return channels, [(c.topic, m.log_time, m) for _, c, m in reader.iter_messages(log_time_order=False)]


def test_the_bundled_drive_reads_with_the_standard_mcap_reader_as_foxglove_expects():
    """What Foxglove relies on: our JSON schemas per topic, foxglove schemas for what it draws."""
    channels, records = mcap_messages(BUNDLED)
    assert {topic: (encoding, schema.name, schema.encoding) for topic, (encoding, schema) in channels.items()} \
        == TOPIC_SCHEMAS
    for topic in TOPICS:  # each topic's schema is the one its codec derives, as the wire has it
        from perception.codec import json_schema

        assert json.loads(channels[topic.name][1].data) == json_schema(topic.message_type)
    image_class = protobuf_class(channels["/camera/image"][1])
    images = [image_class.FromString(m.data) for topic, _, m in records if topic == "/camera/image"]
    assert len(images) == 38 and all(image.format == "jpeg" for image in images)
    first = cv2.imdecode(np.frombuffer(images[0].data, np.uint8), cv2.IMREAD_COLOR)  # the JPEG's bytes, no base64
    assert first.shape == (720, 1280, 3)
    # One clock for every channel, wall-clock time: Foxglove's timeline shows the drive's date, not 1970.
    assert all(log_time > 1_700_000_000 * 10**9 for _, log_time, _ in records)
    from mcap.reader import make_reader

    with open(BUNDLED, "rb") as f:
        assert {chunk.compression for chunk in make_reader(f).get_summary().chunk_indexes} == {"zstd"}


def test_the_bundled_drive_draws_each_frames_boxes_with_class_score_and_track_over_that_frame():
    from perception.detection.classes import WEIGHTS_DIR, read_class_names
    from perception.messages import Detections
    from perception.codec import decode

    channels, records = mcap_messages(BUNDLED)
    annotation_class = protobuf_class(channels["/camera/annotations"][1])
    detections = [decode(m.data, expect=Detections) for topic, _, m in records if topic == "/detections"]
    annotations = [annotation_class.FromString(m.data) for topic, _, m in records if topic == "/camera/annotations"]
    image_class = protobuf_class(channels["/camera/image"][1])
    image_times = {m.sequence: image_class.FromString(m.data).timestamp for topic, _, m in records if topic == "/camera/image"}
    assert len(annotations) == len(detections) == 37 and sum(len(d.boxes) for d in detections) >= 37
    names = read_class_names(WEIGHTS_DIR / "coco_classes.txt")
    for found, drawn in zip(detections, annotations):
        assert len(drawn.points) == len(drawn.texts) == len(found.boxes)
        for box, score, class_id, track, outline, text in zip(found.boxes, found.scores, found.class_ids,
                                                              found.track_ids, drawn.points, drawn.texts):
            x1, y1, x2, y2 = box.tolist()
            assert [(p.x, p.y) for p in outline.points] == [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
            assert text.text == f"{names[class_id]} {score:.2f}" + (f" #{track}" if track else "")
            # the same stamp as the frame's image: what lets Foxglove's image panel pair them
            stamp = image_times[found.frame_id]
            assert (outline.timestamp.seconds, outline.timestamp.nanos) == (stamp.seconds, stamp.nanos)
    # Cars ahead. The drive was recorded before the tracker existed: its detections carry no track ids.
    assert {t.text.split()[0] for a in annotations for t in a.texts} >= {"car"}


def test_a_recording_draws_detections_logs_failsafes_and_times_decisions_from_their_receipt(tmp_path):
    from perception.messages import Action, Control, Decision, Reason, SystemState, WatchdogStatus
    from perception.topics import CONTROL, DETECTIONS, WATCHDOG_STATUS

    sample = all_messages()[1]  # two boxes: a tracked person, an untracked car
    failsafe = Decision(frame_id=8, capture_ns=2_000_000, action=Action.BRAKE, reason=Reason.DEADLINE_MISS,
                        decided_by="watchdog", detail="no decision within 100 ms of capture")
    path = tmp_path / "views.mcap"
    with RecordingWriter(path, class_names=["person", "bicycle", "car"]) as writer:
        writer.write(DETECTIONS, sample, log_time_ns=10_000_000)
        writer.write(DECISIONS, all_messages()[3], log_time_ns=21_000)  # capture 1_000: 0.02 ms later
        writer.write(DECISIONS, failsafe, log_time_ns=102_000_000)
        for depth, state in ((1, SystemState.NOMINAL), (0, SystemState.DEGRADED)):
            writer.write(CONTROL, Control(frame_id=9, capture_ns=3_000, target="detector", max_depth=depth,
                                          reason="p95 near budget"), log_time_ns=110_000_000)
            writer.write(WATCHDOG_STATUS, WatchdogStatus(frame_id=9, capture_ns=3_000, state=state, depth_limit=depth),
                         log_time_ns=110_000_000)
    channels, records = mcap_messages(path)
    assert {topic: (encoding, schema.name, schema.encoding) for topic, (encoding, schema) in channels.items()} \
        == TOPIC_SCHEMAS
    (drawn,) = [protobuf_class(channels["/camera/annotations"][1]).FromString(m.data)
                for topic, _, m in records if topic == "/camera/annotations"]
    assert [[(p.x, p.y) for p in a.points] for a in drawn.points] == [
        [(1, 2), (3, 2), (3, 4), (1, 4)], [(5.5, 6), (7, 6), (7, 8), (5.5, 8)]]
    assert [t.text for t in drawn.texts] == ["person 0.90 #17", "car 0.25"]
    assert (drawn.texts[0].timestamp.seconds, drawn.texts[0].timestamp.nanos) == (0, 40_000_000)  # its media time

    latency = [json.loads(m.data) for topic, _, m in records if topic == "/latency"]
    assert [(r["frame_id"], r["end_to_end_ms"], r["action"], r["failsafe"]) for r in latency] == [
        (7, 0.02, "BRAKE", False), (8, 100.0, "BRAKE", True)]
    assert set(latency[0]["stages_ms"]) == {"capture", "publish"}  # per hop, from the decision's stamps

    log_class = protobuf_class(channels["/log"][1])
    logs = [(log_time, log_class.FromString(m.data)) for topic, log_time, m in records if topic == "/log"]
    wall = writer.wall_offset_ns  # one clock: each entry's log time and its own stamp, both Unix ns
    assert [(t - wall, entry.name, entry.message) for t, entry in logs] == [
        (102_000_000, "watchdog", "fail-safe BRAKE, frame 8: DEADLINE_MISS: no decision within 100 ms of capture"),
        (110_000_000, "watchdog", "system NOMINAL"),
        (110_000_000, "watchdog", "depth ceiling -> exit 0: p95 near budget"),
        (110_000_000, "watchdog", "system DEGRADED"),
    ]
    assert all(entry.timestamp.seconds * 10**9 + entry.timestamp.nanos == t for t, entry in logs)
    # and the reader, for replay, sees the topics alone
    assert [t.name for t, _, _ in RecordingReader(path).messages()] == [
        "/detections", "/decisions", "/decisions"] + ["/watchdog/control", "/watchdog/status"] * 2


def test_a_drive_recorded_through_the_pipeline_draws_its_detections(tmp_path):
    """The real recorder node, fed by the real pipeline: every detections message becomes an
    annotation Foxglove draws, every decision a /latency record."""
    from helpers import run_python
    from perception.messages import Detections
    from perception.codec import decode

    output = tmp_path / "drive.mcap"
    result = run_python(["-m", "perception.cli", "record", str(output), "--source",
                         str(REPO / "recordings" / "udacity_dashcam.mp4"), "--frames", "8"], timeout_s=120)
    assert result.returncode == 0, result.stderr[-3000:]
    channels, records = mcap_messages(output)
    assert {topic: (encoding, schema.name, schema.encoding) for topic, (encoding, schema) in channels.items()} \
        == TOPIC_SCHEMAS
    count = lambda channel: sum(1 for topic, _, _ in records if topic == channel)  # noqa: E731
    assert count("/camera/annotations") == count("/detections") > 0 and count("/latency") == count("/decisions") > 0
    found = next(decode(m.data, expect=Detections) for topic, _, m in records if topic == "/detections")
    drawn = next(protobuf_class(channels["/camera/annotations"][1]).FromString(m.data)
                 for topic, _, m in records if topic == "/camera/annotations")
    assert len(drawn.points) == len(found.boxes) > 0  # cars ahead from the first frame
    x1, y1, x2, y2 = found.boxes[0].tolist()
    assert [(p.x, p.y) for p in drawn.points[0].points] == [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    assert drawn.texts[0].text.startswith(f"car {found.scores[0]:.2f}")


def test_pixels_that_disagree_with_their_frame_header_are_refused_when_written(tmp_path):
    header = FrameHeader(frame_id=1, capture_ns=1, media_ns=0, width=64, height=48, channels=3,
                         transport=FrameTransport.INLINE)
    with RecordingWriter(tmp_path / "drive.mcap") as writer:
        with pytest.raises(RecordingError, match=r"frame 1 is \(24, 64, 3\), its header says 48x64x3"):
            writer.write_frame(header, np.zeros((24, 64, 3), np.uint8), log_time_ns=1)


def protobuf_image_recording(path: Path, image: bytes, schema=None) -> Path:  # noqa: ANN001
    """A recording of one frame whose /camera/image is `image`, a protobuf foxglove.RawImage by default schema."""
    from mcap.writer import Writer
    import foxglove.messages as fg

    schema = schema or fg.RawImage.get_schema()
    header = FrameHeader(frame_id=1, capture_ns=1, media_ns=0, width=6, height=4, channels=3, transport=FrameTransport.INLINE)
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start()
        frames = writer.register_channel("/frames", "json", writer.register_schema(
            "perception.FrameHeader", "jsonschema", json.dumps(json_schema(FrameHeader)).encode()))
        images = writer.register_channel("/camera/image", "protobuf", writer.register_schema(schema.name, "protobuf", schema.data))
        writer.add_message(frames, log_time=1, publish_time=1, data=encode(header))
        writer.add_message(images, log_time=1, publish_time=1, data=image)
        writer.finish()
    return path


@pytest.mark.parametrize("case", ["garbage", "two-channels", "bad-schema"])
def test_a_protobuf_image_that_is_damaged_or_not_bgr8_is_one_line(tmp_path, case):
    """What a damaged or foreign recording may hold on /camera/image; it crashed the capture node
    (a 4x6x2 frame) or raised protobuf's own error (found in review)."""
    import foxglove.messages as fg
    from mcap.records import Schema

    image = {"garbage": b"\xff\xff\xff\xff",
             "two-channels": fg.RawImage(width=6, height=4, encoding="mono16", step=12, data=bytes(48)).encode(),
             "bad-schema": b""}[case]
    schema = Schema(id=1, name="foxglove.RawImage", encoding="protobuf", data=b"\x0a\xff") if case == "bad-schema" else None
    path = protobuf_image_recording(tmp_path / f"{case}.mcap", image, schema)
    with pytest.raises(RecordingError, match=rf"recording {re.escape(str(path))}: bad image of frame 1 \("):
        list(RecordingReader(path).frames())
