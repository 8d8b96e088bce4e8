"""Recorded drives as MCAP files: every topic, frames included, opened by Foxglove as they are.

Channels (one schema each):

    topic channels, one per topic of perception.topics (`/frames`, `/detections`, `/decisions`,
    `/watchdog/status`, `/watchdog/control`, `/heartbeat`): message encoding `json`, the bytes
    exactly as on the wire (perception.messages.encode), schema `perception.<Type>` (`jsonschema`,
    messages.json_schema), so the wire's codec is the recording's and Foxglove plots every field.
    view channels (perception.visualization), derived from the topics as they are written:
    /camera/image        json      foxglove.CompressedImage (JPEG) or foxglove.RawImage (bgr8), jsonschema
    /camera/annotations  protobuf  foxglove.ImageAnnotations, one per Detections: boxes and labels
    /latency             json      perception.Latency, one per Decision, from its receipt (log) time
    /log                 protobuf  foxglove.Log: fail-safes, depth ceiling and system state changes

The image stays JSON (base64) so that replay reads a drive with the mcap package alone, without
protobuf. A frame's header and image are written back to back with the frame id as the MCAP
sequence number; image and annotations carry the frame's media time, so Foxglove's image panel
draws each frame's boxes over that frame. Reading gives the topics (`messages`) and the frames
(`frames`: /frames with /camera/image); the other view channels are for people, never read back.

Crash safety: every completed chunk (`chunk_size`) is handed to the OS at once, so a recorder
killed mid-run leaves every completed chunk on disk; RecordingReader reads such a file up to its last
complete record and says it was truncated. A full disk is no crash: the writer leaves
`min_free_bytes` free (with less left it finishes the file and raises RecordingWriteError), and a
write the disk refuses all the same (someone else filled it, a file-size limit, an I/O error) is
cut off, the file ended after its last complete chunk, and RecordingWriteError raised. Damage is
not truncation: a chunk whose CRC does not match, a record that does not parse before the end of
the file (or anywhere in a file the writer finished), a message that does not decode, or a file
that is not MCAP at all is a RecordingError, one line naming the file and where.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import cv2
import numpy as np

from perception.messages import (
    WIRE_VERSION, FrameHeader, Message, compact_json, decode, encode, json_schema, schema_name,
)
from perception.topics import BY_NAME, CONTROL, DECISIONS, DETECTIONS, FRAMES, TOPICS, WATCHDOG_STATUS, Topic
from perception.visualization import (
    ANNOTATIONS_CHANNEL, CAMERA_FRAME, IMAGE_CHANNEL, LATENCY_CHANNEL, LATENCY_SCHEMA, LOG_CHANNEL, EventLog,
    foxglove_messages, image_annotations, latency_record,
)

log = logging.getLogger(__name__)

MAGIC = b"\x89MCAP0\r\n"  # at the start of every MCAP file, and at the end of a finished one


class RecordingError(RuntimeError):
    """A recording cannot be read or written; the message names the file and the problem."""


class RecordingWriteError(RecordingError):
    """The disk or folder cannot take (more of) a recording: not writable, out of space, a file-size
    limit, an I/O error. What was written before is in the file, readable; a retry would fail alike."""


MB = 1 << 20


def check_room(folder: Path, min_free_bytes: int) -> None:
    """Raise RecordingWriteError (one line) unless a recording can start in `folder`: it exists,
    this process can create files in it, and it has at least `min_free_bytes` free."""
    if not folder.is_dir():
        raise RecordingWriteError(f"{folder}: no such folder")
    try:
        with tempfile.TemporaryFile(dir=folder):  # the real test: permissions, a read-only mount, ACLs
            pass
    except OSError as exc:
        raise RecordingWriteError(f"{folder}: cannot write there ({exc.strerror})") from None
    free = shutil.disk_usage(folder).free
    if free < min_free_bytes:
        raise RecordingWriteError(f"{folder}: {free / MB:.1f} MB free, less than the {min_free_bytes / MB:.1f} MB "
                                  f"a recording leaves free (min_free_mb)")


def _require_mcap() -> None:
    """MCAP is the recording extra, not the vehicle runtime: say how to get it instead of a bare ImportError."""
    try:
        import mcap  # noqa: F401
    except ImportError:
        raise RecordingError("recordings need the mcap package: pip install 'perception[tools]'") from None


_TIMESTAMP_SCHEMA = {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}}
_IMAGE_SCHEMAS = {
    "foxglove.CompressedImage": {"title": "foxglove.CompressedImage", "type": "object", "properties": {
        "timestamp": _TIMESTAMP_SCHEMA, "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"}, "format": {"type": "string"}}},
    "foxglove.RawImage": {"title": "foxglove.RawImage", "type": "object", "properties": {
        "timestamp": _TIMESTAMP_SCHEMA, "frame_id": {"type": "string"}, "width": {"type": "integer"},
        "height": {"type": "integer"}, "encoding": {"type": "string"}, "step": {"type": "integer"},
        "data": {"type": "string", "contentEncoding": "base64"}}},
}


# -- writing --------------------------------------------------------------------------------


class _FileSink:
    """The file as mcap writes to it: each write goes to the OS whole, at once (mcap builds records
    in memory; a buffer here would hold bytes back, and after a failed write hold them for later).
    `end`: where the last complete write ended, a record boundary where a failed one is cut off."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.end = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):  # a short write is followed by the error that caused it, or by the rest
            done += os.write(self.fd, view[done:])
        self.end += len(view)
        return len(view)

    def tell(self) -> int:
        return self.end

    def end_here(self, ending: bytes) -> None:
        """Cut off whatever a failed write left after `end` and append `ending`; if that does not
        fit either, the file ends at `end`, which reads as cut short."""
        os.ftruncate(self.fd, self.end)
        os.lseek(self.fd, self.end, os.SEEK_SET)
        try:
            self.write(ending)
        except OSError:
            os.ftruncate(self.fd, self.end)

    def close(self) -> None:
        os.close(self.fd)


class RecordingWriter:
    """Writes topics and frames; the view channels follow from what is written (see the module doc).

    `class_names` label the annotations (the detector's class list, index = class id); without
    them a label shows the class id. `min_free_bytes`: the room a recording leaves on its disk
    (checked before it starts and after every frame); 0: none."""

    def __init__(self, path: Path, image_format: Literal["jpeg", "raw"] = "jpeg", jpeg_quality: int = 90,
                 chunk_size: int = 1 << 20, class_names: Sequence[str] = (), min_free_bytes: int = 0) -> None:
        _require_mcap()
        try:  # the SDK's message classes, for the protobuf view channels; only writing needs them
            fg = foxglove_messages()
        except RuntimeError as exc:
            raise RecordingError(f"writing recordings: {exc}") from None
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.class_names = list(class_names)
        self.min_free_bytes = min_free_bytes
        self.counts: dict[str, int] = {}  # messages written per channel
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingWriteError(f"{self.path.parent}: cannot create the folder ({exc.strerror})") from None
        check_room(self.path.parent, min_free_bytes)
        try:
            self._sink = _FileSink(self.path)
        except OSError as exc:
            raise RecordingWriteError(f"recording {self.path}: cannot write ({exc.strerror})") from None
        self._closed = False
        # mcap hands a chunk to the sink only when the chunk is complete, and the sink to the OS at
        # once, so a killed recorder loses at most the chunk in progress.
        try:
            with self._writing():
                self._writer = Writer(self._sink, chunk_size=chunk_size, compression=CompressionType.NONE)
                self._writer.start(profile="", library="perception")
                self._channels: dict[str, int] = {}
                for t in TOPICS:
                    self._register_json(t.name, schema_name(t.message_type), json_schema(t.message_type))
                image_schema = "foxglove.CompressedImage" if image_format == "jpeg" else "foxglove.RawImage"
                self._register_json(IMAGE_CHANNEL, image_schema, _IMAGE_SCHEMAS[image_schema])
                self._register_protobuf(ANNOTATIONS_CHANNEL, fg.ImageAnnotations)
                self._register_json(LATENCY_CHANNEL, LATENCY_SCHEMA["title"], LATENCY_SCHEMA)
                self._register_protobuf(LOG_CHANNEL, fg.Log)
        except RecordingWriteError:
            self.path.unlink(missing_ok=True)  # nothing in it yet: no empty file left to pass for a drive
            raise
        self._events = EventLog()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every use of the mcap writer: a write the disk refuses ends the file at the last
        complete record (the writer's own ending, without the summary) and is a RecordingWriteError."""
        if self._closed:
            raise RecordingWriteError(f"recording {self.path}: already ended")
        try:
            yield
        except OSError as exc:
            self._closed = True
            self._sink.end_here(_ending())
            self._sink.close()
            raise RecordingWriteError(f"recording {self.path}: cannot write ({exc.strerror}); ended after its "
                                      f"last complete chunk") from None

    def _register_json(self, channel: str, name: str, schema: dict) -> None:
        schema_id = self._writer.register_schema(name, "jsonschema", json.dumps(schema).encode())
        self._channels[channel] = self._writer.register_channel(channel, "json", schema_id)

    def _register_protobuf(self, channel: str, message_class: type) -> None:
        schema = message_class.get_schema()  # name, encoding "protobuf", data: a FileDescriptorSet
        schema_id = self._writer.register_schema(schema.name, schema.encoding, schema.data)
        self._channels[channel] = self._writer.register_channel(channel, schema.encoding, schema_id)

    def _add(self, channel: str, data: bytes, log_time_ns: int, message: Message) -> None:
        with self._writing():
            self._writer.add_message(self._channels[channel], log_time=log_time_ns, data=data,
                                     publish_time=message.capture_ns, sequence=message.frame_id & 0xFFFFFFFF)
        self.counts[channel] = self.counts.get(channel, 0) + 1

    def write(self, topic: Topic, message: Message, log_time_ns: int) -> None:
        """`message` on its topic's channel (the wire bytes), and what Foxglove shows of it on the
        view channels. `log_time_ns`: when it was received; a decision's /latency ends there."""
        if not isinstance(message, topic.message_type):
            raise TypeError(f"{topic.name} carries {topic.message_type.__name__}, not {type(message).__name__}")
        self._add(topic.name, encode(message), log_time_ns, message)
        for channel, data in self._views(topic, message, log_time_ns):
            self._add(channel, data, log_time_ns, message)

    def _views(self, topic: Topic, message: Message, log_time_ns: int) -> Iterator[tuple[str, bytes]]:
        if topic == DETECTIONS:
            yield ANNOTATIONS_CHANNEL, image_annotations(message, self.class_names).encode()
            return
        entry = None
        if topic == DECISIONS:
            yield LATENCY_CHANNEL, compact_json(latency_record(message, log_time_ns))
            entry = self._events.from_decision(message, log_time_ns)
        elif topic == CONTROL:
            entry = self._events.from_control(message, log_time_ns)
        elif topic == WATCHDOG_STATUS:
            entry = self._events.from_status(message, log_time_ns)
        if entry is not None:
            yield LOG_CHANNEL, entry.encode()

    def write_frame(self, header: FrameHeader, pixels: np.ndarray, log_time_ns: int) -> None:
        """The header on /frames and the pixels on /camera/image, JPEG-encoded or raw per `image_format`."""
        if self.image_format == "raw":
            image = {"timestamp": _stamp(header.media_ns), "frame_id": CAMERA_FRAME, "width": header.width,
                     "height": header.height, "encoding": "bgr8", "step": header.width * header.channels,
                     "data": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()}
            self._write_image(header, image, log_time_ns)
            return
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RecordingError(f"{self.path}: JPEG encoding of frame {header.frame_id} failed")
        self.write_jpeg(header, encoded.tobytes(), log_time_ns)

    def write_jpeg(self, header: FrameHeader, jpeg: bytes, log_time_ns: int) -> None:
        """A frame already JPEG-encoded, its bytes kept as they are (re-recording a drive)."""
        if self.image_format != "jpeg":
            raise RecordingError(f"{self.path}: a JPEG frame in a recording of {self.image_format} images")
        image = {"timestamp": _stamp(header.media_ns), "frame_id": CAMERA_FRAME, "format": "jpeg",
                 "data": base64.b64encode(jpeg).decode()}
        self._write_image(header, image, log_time_ns)

    def _write_image(self, header: FrameHeader, image: dict, log_time_ns: int) -> None:
        self._add(FRAMES.name, encode(header), log_time_ns, header)
        self._add(IMAGE_CHANNEL, compact_json(image), log_time_ns, header)
        if self.min_free_bytes:
            free = shutil.disk_usage(self.path.parent).free
            if free < self.min_free_bytes:  # the chunk in progress and the summary still fit in the rest
                self.close()
                raise RecordingWriteError(f"recording {self.path}: out of space, {free / MB:.1f} MB left on "
                                          f"{self.path.parent} (it keeps {self.min_free_bytes / MB:.1f} MB free); "
                                          f"ended after frame {header.frame_id}")

    def close(self) -> None:
        if self._closed:
            return
        with self._writing():
            self._writer.finish()
        self._closed = True
        self._sink.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ending() -> bytes:
    """mcap's Writer.finish less the (optional) summary: data end, a footer naming no summary, the magic."""
    from mcap.data_stream import RecordBuilder
    from mcap.records import DataEnd, Footer

    builder = RecordBuilder()
    DataEnd(data_section_crc=0).write(builder)
    Footer(summary_start=0, summary_offset_start=0, summary_crc=0).write(builder)
    return builder.end() + MAGIC


def _stamp(media_ns: int) -> dict:
    return {"sec": media_ns // 1_000_000_000, "nsec": media_ns % 1_000_000_000}


# -- reading --------------------------------------------------------------------------------


class RecordingReader:
    """Reads a recording in file order; tolerates a file cut short by a crash (see `truncated`), not a damaged one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RecordingError(f"recording {self.path}: file not found")
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise RecordingError(f"recording {self.path}: not an MCAP file")
        self.truncated = False

    def records(self) -> Iterator[tuple[str, int, bytes]]:
        """(channel topic, log_time_ns, data) in file order, up to the last complete record.

        Chunk CRCs are checked, so damaged data is an error (RecordingError naming the byte offset)
        rather than garbage handed on; only a file that ends mid-record without the closing magic a
        finished recording has counts as cut short (`truncated`, a warning)."""
        _require_mcap()
        from mcap.records import Channel, Footer, Header, Message as McapMessage, Schema
        from mcap.stream_reader import StreamReader

        size = self.path.stat().st_size
        channels: dict[int, str] = {}
        schemas: dict[int, Schema] = {}
        with open(self.path, "rb") as f:
            iterator = iter(StreamReader(f, skip_magic=False, validate_crcs=True).records)
            first = True
            while True:
                # A failure comes from reading the next top-level record (a chunk is checked whole
                # before its records are yielded), which starts where the stream stands now.
                offset = f.tell()
                try:
                    record = next(iterator)
                except StopIteration:
                    return
                except Exception as exc:  # the mcap library raises struct, unicode, CRC and its own errors
                    if first:
                        raise RecordingError(f"recording {self.path}: no complete MCAP header record after the "
                                             f"magic (corrupt or cut short: {_describe(exc)})") from None
                    if f.tell() < size or self._finished(size):  # bad data before the end of the file
                        raise RecordingError(f"recording {self.path}: corrupt record at byte {offset} of {size} "
                                             f"({_describe(exc)})") from None
                    self.truncated = True
                    log.warning("recording %s ends mid-record at byte %d (cut short?): read up to the last complete "
                                "chunk", self.path, offset)
                    return
                if first and not isinstance(record, Header):
                    raise RecordingError(f"recording {self.path}: corrupt: its first record is a "
                                         f"{type(record).__name__}, not the MCAP header")
                first = False
                if isinstance(record, Footer):
                    return  # a complete file: the writer finished it
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record.topic
                    self._check_format(record.topic, schemas.get(record.schema_id))
                elif isinstance(record, McapMessage):
                    yield channels.get(record.channel_id, "?"), record.log_time, record.data

    def _check_format(self, channel: str, schema) -> None:  # noqa: ANN001 - an mcap Schema record or None
        """A topic channel of ours must speak this build's wire format: a drive recorded before it
        is one line here, before any frame is played, rather than a failure at its first message."""
        if channel not in BY_NAME or schema is None or not schema.name.startswith("perception."):
            return  # a channel of no schema (tests, other tools) is judged by its messages
        try:
            version = json.loads(schema.data)["properties"]["wire"]["const"]
        except (ValueError, KeyError, TypeError):
            version = None
        if version != WIRE_VERSION:
            found = f"in wire format {version}" if version is not None else "in an older message format"
            raise RecordingError(f"recording {self.path}: {channel} was recorded {found}; this build reads wire "
                                 f"format {WIRE_VERSION} (re-record the drive)")

    def _finished(self, size: int) -> bool:
        """Whether the file ends with the closing magic: a recorder killed mid-run never writes it."""
        with open(self.path, "rb") as f:
            f.seek(max(size - len(MAGIC), 0))
            return f.read() == MAGIC

    def messages(self, topics: Iterable[Topic] | None = None) -> Iterator[tuple[Topic, int, Message]]:
        """(topic, log_time_ns, message) of the topic channels (all, or those of `topics`), in file
        order, decoded by the wire's codec; the view channels are skipped."""
        wanted = None if topics is None else {t.name for t in topics}
        for channel, log_time, data in self.records():
            topic = BY_NAME.get(channel)
            if topic is not None and (wanted is None or channel in wanted):
                with self._decoding(f"{channel} message at log time {log_time}"):
                    message = decode(data, expect=topic.message_type)
                yield topic, log_time, message

    def frames(self) -> Iterator[tuple[FrameHeader, np.ndarray]]:
        """Frame headers with their decoded pixels, in recorded order."""
        header: FrameHeader | None = None
        for channel, log_time, data in self.records():
            if channel == FRAMES.name:
                with self._decoding(f"frame header at log time {log_time}"):
                    header = decode(data, expect=FrameHeader)
            elif channel == IMAGE_CHANNEL and header is not None:
                with self._decoding(f"image of frame {header.frame_id}"):
                    pixels = _decode_image(json.loads(data))
                yield header, pixels
                header = None

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turn whatever a damaged message makes JSON, base64 or the decoders raise into one line
        naming the file and the message."""
        try:
            yield
        except (ValueError, KeyError, TypeError, RecordingError) as exc:  # binascii.Error is a ValueError
            raise RecordingError(f"recording {self.path}: bad {what} ({_describe(exc)})") from None


def _decode_image(image: dict) -> np.ndarray:
    """The pixels of a foxglove.CompressedImage (JPEG) or foxglove.RawImage (bgr8) message."""
    if not isinstance(image, dict):
        raise TypeError(f"expected a JSON object, got {type(image).__name__}")
    raw = base64.b64decode(image["data"], validate=True)
    if image.get("format") == "jpeg":
        pixels = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            raise ValueError("not a decodable JPEG")
        return pixels
    expected = image["height"] * image["step"]
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes of pixels, expected {expected}")
    return np.frombuffer(raw, np.uint8).reshape(image["height"], image["width"], -1).copy()


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase for a one-line error."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, RecordingError):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
