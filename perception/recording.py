"""Recorded drives as MCAP files: every topic, frames included, readable by Foxglove.

Channels: one per topic (`/frames`, `/detections`, `/decisions`, `/watchdog`, `/control`,
`/heartbeat`), JSON-encoded with a JSON schema, plus `/camera/image`: the pixels as Foxglove's
`foxglove.CompressedImage` (JPEG) or `foxglove.RawImage` (bgr8). A frame's header and image are
written back to back with the frame id as the MCAP sequence number.

Crash safety: every completed chunk (`chunk_size`) is handed to the OS at once, so a recorder
killed mid-run leaves every completed chunk on disk; RecordingReader reads such a file up to its last
complete record and says it was truncated. Damage is not truncation: a chunk whose CRC does not
match, a record that does not parse before the end of the file (or anywhere in a file the writer
finished), a message that does not decode, or a file that is not MCAP at all is a RecordingError,
one line naming the file and where.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

import cv2
import numpy as np

from perception.messages import (
    Action, Control, Decision, Detections, FrameHeader, FrameTransport, Heartbeat, Message, NodeState, Reason, Stamp,
    SystemState, Target, WatchdogStatus,
)

log = logging.getLogger(__name__)

TOPIC_TYPES: dict[str, type[Message]] = {
    "frames": FrameHeader, "detections": Detections, "decisions": Decision,
    "watchdog": WatchdogStatus, "control": Control, "heartbeat": Heartbeat,
}
IMAGE_CHANNEL = "/camera/image"
MAGIC = b"\x89MCAP0\r\n"  # at the start of every MCAP file, and at the end of a finished one


class RecordingError(RuntimeError):
    """A recording cannot be read or written; the message names the file and the problem."""


def _require_mcap() -> None:
    """MCAP is the recording extra, not the vehicle runtime: say how to get it instead of a bare ImportError."""
    try:
        import mcap  # noqa: F401
    except ImportError:
        raise RecordingError("recordings need the mcap package: pip install 'perception[tools]'") from None


# -- messages <-> JSON ----------------------------------------------------------------------


def message_to_dict(message: Message) -> dict:
    out = {}
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, enum.Enum):
            value = value.name
        elif f.name == "stamps":
            value = [[s.stage, s.t_ns] for s in value]
        elif isinstance(value, Target):  # a Decision's target; inf (not closing) is null in JSON
            value = dataclasses.asdict(value)
            value["ttc_s"] = None if value["ttc_s"] == float("inf") else value["ttc_s"]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def message_from_dict(message_type: type[Message], data: dict) -> Message:
    if not isinstance(data, dict):
        raise RecordingError(f"{message_type.__name__} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(message_type)}
    unknown = set(data) - names
    if unknown:
        raise RecordingError(f"{message_type.__name__} has no field(s) {sorted(unknown)}")
    return message_type(**{name: _field_from_json(message_type, name, value) for name, value in data.items()})


_DETECTION_ARRAYS = {  # field -> (dtype, row width or 0 for a vector)
    "boxes": (np.float32, 4), "scores": (np.float32, 0), "class_ids": (np.uint16, 0),
    "track_ids": (np.uint32, 0), "velocities": (np.float32, 2),
}

_ENUM_FIELDS: dict[tuple[type[Message], str], type[enum.Enum]] = {
    (FrameHeader, "transport"): FrameTransport,
    (Decision, "action"): Action,
    (Decision, "reason"): Reason,
    (Heartbeat, "state"): NodeState,
    (WatchdogStatus, "state"): SystemState,
}


def _field_from_json(message_type: type[Message], name: str, value):
    if name == "stamps":
        return tuple(Stamp(stage, int(t)) for stage, t in value)
    if message_type is Decision and name == "target":
        if value is None:
            return None
        ttc = float("inf") if value["ttc_s"] is None else value["ttc_s"]
        return Target(int(value["class_id"]), float(value["score"]), tuple(value["box"]), ttc)
    if message_type is Detections and name in _DETECTION_ARRAYS:
        dtype, width = _DETECTION_ARRAYS[name]
        return np.array(value, dtype).reshape((-1, width) if width else (-1,))
    if name == "nodes_down":
        return tuple(value)
    enum_type = _ENUM_FIELDS.get((message_type, name))
    return enum_type[value] if enum_type is not None else value


def decode_message(topic: str, data: bytes) -> Message:
    return message_from_dict(TOPIC_TYPES[topic], json.loads(data))


def _schema(message_type: type[Message]) -> bytes:
    # A permissive JSON schema naming the fields: enough for Foxglove to list and plot them.
    return json.dumps({"title": f"perception.{message_type.__name__}", "type": "object",
                       "properties": {f.name: {} for f in dataclasses.fields(message_type)}}).encode()


_IMAGE_SCHEMAS = {
    "foxglove.CompressedImage": {"title": "foxglove.CompressedImage", "type": "object", "properties": {
        "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
        "frame_id": {"type": "string"}, "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"}}},
    "foxglove.RawImage": {"title": "foxglove.RawImage", "type": "object", "properties": {
        "timestamp": {"type": "object", "properties": {"sec": {"type": "integer"}, "nsec": {"type": "integer"}}},
        "frame_id": {"type": "string"}, "width": {"type": "integer"}, "height": {"type": "integer"},
        "encoding": {"type": "string"}, "step": {"type": "integer"},
        "data": {"type": "string", "contentEncoding": "base64"}}},
}


# -- writing --------------------------------------------------------------------------------


class RecordingWriter:
    def __init__(self, path: Path, image_format: Literal["jpeg", "raw"] = "jpeg", jpeg_quality: int = 90,
                 chunk_size: int = 1 << 20) -> None:
        _require_mcap()
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.counts: dict[str, int] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mcap writes a chunk to the stream only when the chunk is complete; flushing after every
        # message (see _flush) hands each completed chunk to the OS at once, so a killed recorder
        # loses at most the chunk in progress.
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file, chunk_size=chunk_size, compression=CompressionType.NONE)
        self._writer.start(profile="", library="perception")
        self._channels: dict[str, int] = {}
        for topic, message_type in TOPIC_TYPES.items():
            schema = self._writer.register_schema(f"perception.{message_type.__name__}", "jsonschema", _schema(message_type))
            self._channels[topic] = self._writer.register_channel(f"/{topic}", "json", schema)
        image_schema = "foxglove.CompressedImage" if image_format == "jpeg" else "foxglove.RawImage"
        schema = self._writer.register_schema(image_schema, "jsonschema", json.dumps(_IMAGE_SCHEMAS[image_schema]).encode())
        self._channels[IMAGE_CHANNEL] = self._writer.register_channel(IMAGE_CHANNEL, "json", schema)

    def write(self, topic: str, message: Message, log_time_ns: int) -> None:
        data = json.dumps(message_to_dict(message), separators=(",", ":")).encode()
        self._writer.add_message(self._channels[topic], log_time=log_time_ns, data=data,
                                 publish_time=message.capture_ns, sequence=message.frame_id & 0xFFFFFFFF)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self._file.flush()

    def write_frame(self, header: FrameHeader, pixels: np.ndarray, log_time_ns: int) -> None:
        """The header on /frames and the pixels on /camera/image."""
        self.write("frames", header, log_time_ns)
        stamp = {"sec": header.media_ns // 1_000_000_000, "nsec": header.media_ns % 1_000_000_000}
        if self.image_format == "jpeg":
            ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise RecordingError(f"{self.path}: JPEG encoding of frame {header.frame_id} failed")
            image = {"timestamp": stamp, "frame_id": str(header.frame_id), "format": "jpeg",
                     "data": base64.b64encode(encoded.tobytes()).decode()}
        else:
            image = {"timestamp": stamp, "frame_id": str(header.frame_id), "width": header.width,
                     "height": header.height, "encoding": "bgr8", "step": header.width * header.channels,
                     "data": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()}
        self._writer.add_message(self._channels[IMAGE_CHANNEL], log_time=log_time_ns,
                                 data=json.dumps(image, separators=(",", ":")).encode(),
                                 publish_time=header.capture_ns, sequence=header.frame_id & 0xFFFFFFFF)
        self.counts[IMAGE_CHANNEL] = self.counts.get(IMAGE_CHANNEL, 0) + 1
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._writer.finish()
        self._file.flush()
        self._file.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        from mcap.records import Channel, Footer, Header, Message as McapMessage
        from mcap.stream_reader import StreamReader

        size = self.path.stat().st_size
        channels: dict[int, str] = {}
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
                if isinstance(record, Channel):
                    channels[record.id] = record.topic
                elif isinstance(record, McapMessage):
                    yield channels.get(record.channel_id, "?"), record.log_time, record.data

    def _finished(self, size: int) -> bool:
        """Whether the file ends with the closing magic: a recorder killed mid-run never writes it."""
        with open(self.path, "rb") as f:
            f.seek(max(size - len(MAGIC), 0))
            return f.read() == MAGIC

    def messages(self, topics: set[str] | None = None) -> Iterator[tuple[str, int, Message]]:
        """(topic, log_time_ns, message) for the JSON topics (without the leading '/')."""
        for channel, log_time, data in self.records():
            topic = channel.lstrip("/")
            if topic in TOPIC_TYPES and (topics is None or topic in topics):
                with self._decoding(f"{topic} message at log time {log_time}"):
                    message = decode_message(topic, data)
                yield topic, log_time, message

    def frames(self) -> Iterator[tuple[FrameHeader, np.ndarray]]:
        """Frame headers with their decoded pixels, in recorded order."""
        header: FrameHeader | None = None
        for channel, log_time, data in self.records():
            if channel == "/frames":
                with self._decoding(f"frame header at log time {log_time}"):
                    header = decode_message("frames", data)
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
