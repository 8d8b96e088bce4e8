"""Reading a recorded drive (perception.recording has the format): in file order, its topics
decoded by the one codec and its frames with their pixels; a file cut short by a crash up to its
last complete record (`truncated`), damage of any kind as one RecordingError naming file and place."""

from __future__ import annotations

import base64
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from perception.codec import UPGRADABLE_WIRE_VERSIONS, decode, upgrade
from perception.image_decode import decode_compressed
from perception.messages import WIRE_VERSION, FrameHeader, Message
from perception.recording import MAGIC, RecordingError, codec_refused, require_mcap
from perception.topics import BY_NAME, FRAMES, Topic
from perception.visualization import IMAGE_CHANNEL

log = logging.getLogger("perception.recording")


class RecordingReader:
    """Reads a recording in file order; tolerates a file cut short by a crash (see `truncated`), not a damaged one."""

    def __init__(self, path: Path, upgrade_older: bool = False, warn_cut_short: bool = True) -> None:
        """`upgrade_older`: read topic channels of an older wire format too, each message upgraded
        (perception.codec.upgrade), as `perception migrate` does; otherwise they are refused.
        `warn_cut_short`: log a warning when the file ends mid-record (a first pass of two says nothing)."""
        self.path = Path(path)
        self.upgrade_older = upgrade_older
        self.warn_cut_short = warn_cut_short
        if not self.path.is_file():
            raise RecordingError(f"recording {self.path}: file not found")
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise RecordingError(f"recording {self.path}: not an MCAP file")
        self.truncated = False
        self.channel_schemas: dict = {}  # channel topic -> (message encoding, its mcap Schema record), as read
        self._image_class: type | None = None  # the protobuf class of /camera/image, once seen
        self.publish_time = 0  # the MCAP publish time of the record records() yielded last

    def records(self) -> Iterator[tuple[str, int, bytes]]:
        """(channel topic, log_time_ns, data) in file order, up to the last complete record.

        Chunk CRCs are checked, so damaged data is an error (RecordingError naming the byte offset)
        rather than garbage handed on; only a file that ends mid-record without the closing magic a
        finished recording has counts as cut short (`truncated`, a warning)."""
        require_mcap()
        from mcap.records import Channel, Footer, Header, Message as McapMessage, Schema
        from mcap.exceptions import UnsupportedCompressionError
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
                except UnsupportedCompressionError as exc:  # the file is fine: this Python lacks the codec
                    raise RecordingError(f"recording {self.path}: {codec_refused(exc)}") from None
                except Exception as exc:  # the mcap library raises struct, unicode, CRC and its own errors
                    if first:
                        raise RecordingError(f"recording {self.path}: no complete MCAP header record after the "
                                             f"magic (corrupt or cut short: {_describe(exc)})") from None
                    if f.tell() < size or self._finished(size):  # bad data before the end of the file
                        raise RecordingError(f"recording {self.path}: corrupt record at byte {offset} of {size} "
                                             f"({_describe(exc)})") from None
                    self.truncated = True
                    if self.warn_cut_short:
                        log.warning("recording %s ends mid-record at byte %d (cut short?): read up to the last "
                                    "complete chunk", self.path, offset)
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
                    self.channel_schemas[record.topic] = (record.message_encoding, schemas.get(record.schema_id))
                elif isinstance(record, McapMessage):
                    self.publish_time = record.publish_time  # of the record yielded now
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
        if version != WIRE_VERSION and not (self.upgrade_older and version in UPGRADABLE_WIRE_VERSIONS):
            found = f"in wire format {version}" if version is not None else "in an older message format"
            raise RecordingError(f"recording {self.path}: {channel} was recorded {found}; this build reads wire "
                                 f"format {WIRE_VERSION} (perception migrate converts it)")

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
                    message = decode(upgrade(data) if self.upgrade_older else data, expect=topic.message_type)
                yield topic, log_time, message

    def frames(self) -> Iterator[tuple[FrameHeader, np.ndarray]]:
        """Frame headers with their decoded pixels, in recorded order."""
        for header, image, raw in self.encoded_frames():
            with self._decoding(f"image of frame {header.frame_id}"):
                pixels = decode_image(image, raw)
                if pixels.shape != (header.height, header.width, header.channels):
                    raise ValueError(f"{pixels.shape[1]}x{pixels.shape[0]}x{pixels.shape[2]} pixels, its header says "
                                     f"{header.width}x{header.height}x{header.channels}")
            yield header, pixels

    def encoded_frames(self) -> Iterator[tuple[FrameHeader, dict, bytes]]:
        """Frame headers with their image message (format, and size for raw ones) and its bytes as
        recorded (JPEG, or raw bgr8), in recorded order: what a converter copies without re-encoding."""
        header: FrameHeader | None = None
        for channel, log_time, data in self.records():
            if channel == FRAMES.name:
                with self._decoding(f"frame header at log time {log_time}"):
                    header = decode(upgrade(data) if self.upgrade_older else data, expect=FrameHeader)
            elif channel == IMAGE_CHANNEL and header is not None:
                with self._decoding(f"image of frame {header.frame_id}"):
                    image, raw = self.image(data)
                yield header, image, raw
                header = None

    def image(self, data: bytes) -> tuple[dict, bytes]:
        """(format, and size for a raw image; its bytes) of a /camera/image message: protobuf
        foxglove.CompressedImage or RawImage, or the base64 JSON of recordings made before them."""
        encoding, schema = self.channel_schemas.get(IMAGE_CHANNEL, ("json", None))
        if encoding == "protobuf":
            if schema is None or schema.name not in ("foxglove.CompressedImage", "foxglove.RawImage"):
                raise ValueError(f"a protobuf image channel of schema {getattr(schema, 'name', None)!r}")
            if self._image_class is None:
                try:
                    self._image_class = protobuf_class(schema)
                except Exception as exc:  # protobuf's own errors for a damaged FileDescriptorSet
                    raise ValueError(f"its {schema.name} schema does not parse ({type(exc).__name__})") from None
            try:
                message = self._image_class.FromString(data)
            except Exception as exc:  # protobuf's DecodeError: not a ValueError
                raise ValueError(f"not a {schema.name} ({exc})") from None
            if schema.name == "foxglove.CompressedImage":
                return {"format": message.format}, message.data
            return {"format": "raw", "width": message.width, "height": message.height, "step": message.step,
                    "encoding": message.encoding}, message.data
        image = json.loads(data)
        if not isinstance(image, dict):
            raise TypeError(f"expected a JSON object, got {type(image).__name__}")
        return image, base64.b64decode(image["data"], validate=True)

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """Turn whatever a damaged message makes JSON, base64 or the decoders raise into one line
        naming the file and the message."""
        try:
            yield
        except (ValueError, KeyError, TypeError, RecordingError) as exc:  # binascii.Error is a ValueError
            raise RecordingError(f"recording {self.path}: bad {what} ({_describe(exc)})") from None


def protobuf_class(schema) -> type:  # noqa: ANN001 - an mcap Schema record (encoding protobuf)
    """The message class of a protobuf schema as MCAP stores it (a FileDescriptorSet), built by the
    protobuf library from the file itself: no generated code to keep in step."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    files = descriptor_pb2.FileDescriptorSet.FromString(schema.data)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))


def decode_image(image: dict, raw: bytes) -> np.ndarray:
    """The pixels of a foxglove.CompressedImage (JPEG) or foxglove.RawImage (bgr8) message, `raw` its bytes."""
    if image.get("format") == "jpeg":
        return decode_compressed(raw, "a JPEG")
    if image.get("encoding", "bgr8") != "bgr8" or image["step"] != image["width"] * 3:
        raise ValueError(f"a raw image of encoding {image.get('encoding')!r}, step {image['step']} for width "
                         f"{image['width']}: this reader takes bgr8 rows without padding, as the recorder writes them")
    expected = image["height"] * image["step"]
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes of pixels, expected {expected}")
    return np.frombuffer(raw, np.uint8).reshape(image["height"], image["width"], 3).copy()


def _describe(exc: BaseException) -> str:
    """An exception as a short phrase for a one-line error."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, RecordingError):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
