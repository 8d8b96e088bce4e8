"""Recorded drives as MCAP files: every topic, frames included, opened by Foxglove as they are.

Channels (one schema each):

    topic channels, one per topic of perception.topics (`/frames`, `/detections`, `/decisions`,
    `/watchdog/status`, `/watchdog/control`, `/heartbeat`): message encoding `json`, the bytes
    exactly as on the wire (perception.codec.encode), schema `perception.<Type>` (`jsonschema`,
    codec.json_schema), so the wire's codec is the recording's and Foxglove plots every field.
    view channels (perception.visualization), derived from the topics as they are written:
    /camera/image        protobuf  foxglove.CompressedImage (the JPEG's bytes) or foxglove.RawImage (bgr8)
    /camera/annotations  protobuf  foxglove.ImageAnnotations, one per Detections: boxes and labels
    /latency             json      perception.Latency, one per Decision, from its receipt (log) time
    /log                 protobuf  foxglove.Log: fail-safes, depth ceiling and system state changes

One clock for every channel: log and publish times are wall-clock (Unix) ns, this host's clock
plus an offset measured once when the recording starts (perception.latency.wall_clock_offset_ns), so
Foxglove's timeline shows the drive's date and an NTP step mid-drive moves no stamp; the log time
is when the recorder received the message, the publish time its frame's capture. The messages keep
their own times (capture_ns on the host's monotonic clock, media_ns the frame's place in its
source); image and annotations carry the frame's media time, so Foxglove's image panel draws each
frame's boxes over that frame. Chunks are zstd-compressed (`compression`). A frame's header and
image are written back to back with the frame id as the MCAP sequence number. Reading gives the
topics (`messages`) and the frames (`frames`: /frames with /camera/image, protobuf or the JSON of
recordings made before, perception.recording_reader); the other view channels are for people.

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

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal, Sequence

import cv2
import numpy as np

from perception.messages import FrameHeader, Message
from perception.codec import encode
from perception.topics import FRAMES, Topic
from perception.latency import wall_clock_offset_ns
from perception.visualization import (
    IMAGE_CHANNEL, Channel, PipelineView, compressed_image, pipeline_channels, raw_image,
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


def require_mcap() -> None:
    """MCAP is the recording extra, not the vehicle runtime: say how to get it instead of a bare ImportError."""
    try:
        import mcap  # noqa: F401
    except ImportError:
        raise RecordingError("recordings need the mcap package: pip install 'perception[tools]'") from None


Compression = Literal["zstd", "lz4", "none"]  # MCAP chunk compression
# MCAP's codecs are packages of their own (the mcap package's dependencies): the module each needs.
COMPRESSION_MODULES = {"zstd": "zstandard", "lz4": "lz4"}


def missing_codec(compression: str) -> str | None:
    """Why this Python cannot write chunks of `compression`, or None: a missing codec is an environment
    to fix, not a recording that failed. Asked of mcap's writer itself, which imports each codec or
    holds None for it (a package installed but not importable, a wrong build, counts as missing)."""
    module = COMPRESSION_MODULES.get(compression)
    if module is None:
        return None
    try:
        import mcap.writer
    except ImportError:
        return None  # require_mcap says so
    return codec_missing(module) if getattr(mcap.writer, module, None) is None else None


def codec_missing(module: str) -> str:
    """The one-line reason for a missing codec package `module` (zstandard, lz4)."""
    return f"its MCAP chunks need the {module} package, which this Python lacks (pip install {module}; mcap normally brings it)"


def codec_refused(exc: Exception) -> str:
    """codec_missing for mcap's UnsupportedCompressionError, whose message ends with the package it
    could not import ("unsupported compression type zstandard"), when reading or writing."""
    return codec_missing(str(exc).split()[-1])


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
                 chunk_size: int = 1 << 20, class_names: Sequence[str] = (), min_free_bytes: int = 0,
                 compression: Compression = "zstd", wall_offset_ns: int | None = None) -> None:
        require_mcap()
        if (missing := missing_codec(compression)) is not None:
            raise RecordingError(f"recording {path}: {missing}")
        try:  # the SDK's message classes, for the protobuf view channels; only writing needs them
            channels = pipeline_channels(image_format)
        except RuntimeError as exc:
            raise RecordingError(f"writing recordings: {exc}") from None
        from mcap.exceptions import UnsupportedCompressionError
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.class_names = list(class_names)
        self.min_free_bytes = min_free_bytes
        self.counts: dict[str, int] = {}  # messages written per channel
        # This host's clock (the messages' and log times given here) -> Unix time, for MCAP's times.
        self.wall_offset_ns = wall_clock_offset_ns() if wall_offset_ns is None else wall_offset_ns
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
                try:
                    self._writer = Writer(self._sink, chunk_size=chunk_size, compression=CompressionType[compression.upper()])
                except UnsupportedCompressionError as exc:  # after missing_codec said yes: say it the same way
                    self._sink.close()
                    raise RecordingWriteError(f"recording {self.path}: {codec_refused(exc)}") from None
                self._writer.start(profile="", library="perception")
                self._channels = {channel.name: self._register(channel) for channel in channels}
        except RecordingWriteError:
            self.path.unlink(missing_ok=True)  # nothing in it yet: no empty file left to pass for a drive
            raise
        self._view = PipelineView(self.class_names)

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

    def _register(self, channel: Channel) -> int:
        schema_id = self._writer.register_schema(channel.schema_name, channel.schema_encoding, channel.schema)
        return self._writer.register_channel(channel.name, channel.message_encoding, schema_id)

    def _add(self, channel: str, data: bytes, log_time_ns: int, message: Message) -> None:
        with self._writing():
            # Publish time: the capture of the frame it descends from; before the first frame (a
            # heartbeat, a status: capture_ns 0), its own log time.
            published = message.capture_ns if message.capture_ns > 0 else log_time_ns
            self._writer.add_message(self._channels[channel], log_time=log_time_ns + self.wall_offset_ns, data=data,
                                     publish_time=published + self.wall_offset_ns, sequence=message.frame_id & 0xFFFFFFFF)
        self.counts[channel] = self.counts.get(channel, 0) + 1

    def write(self, topic: Topic, message: Message, log_time_ns: int) -> None:
        """`message` on its topic's channel (the wire bytes), and what Foxglove shows of it on the
        view channels. `log_time_ns`: when it was received, on this host's clock (now_ns); a
        decision's /latency ends there."""
        if not isinstance(message, topic.message_type):
            raise TypeError(f"{topic.name} carries {topic.message_type.__name__}, not {type(message).__name__}")
        self._add(topic.name, encode(message), log_time_ns, message)
        for channel, data in self._view.derive(topic, message, log_time_ns, log_time_ns + self.wall_offset_ns):
            self._add(channel, data, log_time_ns, message)

    def write_frame(self, header: FrameHeader, pixels: np.ndarray, log_time_ns: int) -> None:
        """The header on /frames and the pixels on /camera/image, JPEG-encoded or raw per `image_format`."""
        if pixels.shape != (header.height, header.width, header.channels):
            raise RecordingError(f"{self.path}: frame {header.frame_id} is {pixels.shape}, its header says "
                                 f"{header.height}x{header.width}x{header.channels}")
        if self.image_format == "raw":
            self._write_image(header, raw_image(header.media_ns, np.ascontiguousarray(pixels)).encode(), log_time_ns)
            return
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RecordingError(f"{self.path}: JPEG encoding of frame {header.frame_id} failed")
        self.write_jpeg(header, encoded.tobytes(), log_time_ns)

    def write_jpeg(self, header: FrameHeader, jpeg: bytes, log_time_ns: int) -> None:
        """A frame already JPEG-encoded, its bytes kept as they are (re-recording a drive)."""
        if self.image_format != "jpeg":
            raise RecordingError(f"{self.path}: a JPEG frame in a recording of {self.image_format} images")
        self._write_image(header, compressed_image(header.media_ns, jpeg).encode(), log_time_ns)

    def _write_image(self, header: FrameHeader, image: bytes, log_time_ns: int) -> None:
        self._add(FRAMES.name, encode(header), log_time_ns, header)
        self._add(IMAGE_CHANNEL, image, log_time_ns, header)
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

