"""Frame sources for the capture node: video file, image folder, recording, synthetic pattern, and the
live ones of perception.live_sources (camera, network stream, GStreamer pipeline).

A source yields (frame, media_ns): an HxWx3 BGR uint8 image and its position in the source's
own timeline. A source that cannot start raises SourceError with one line naming the culprit;
a frame that cannot be decoded mid-stream is skipped and counted in `bad_frames`, but a file
source that ends without delivering a single frame is a SourceError too, never a quiet success.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np

from perception.config import NonNegativeInt, PositiveInt, Range, check_ranges
from perception.image_decode import decode_compressed
from perception.live_sources import SourceError, is_stream_url, open_camera, open_gstreamer, open_stream
from perception.messages import MAX_IMAGE_SIDE

ImageSide = Annotated[int, Range(1, MAX_IMAGE_SIDE)]
FrameRate = Annotated[float, Range(0, 1000, low_open=True)]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class SourceConfig:
    kind: Literal["video", "camera", "images", "synthetic", "recording", "stream", "gstreamer", "ros2"]
    path: Path | None = None  # video file, image folder, MCAP recording or ROS 2 bag directory
    topic: str | None = None  # ros2: the image topic (default: the bag's only one)
    camera_index: NonNegativeInt = 0
    device: Path | None = None  # camera: a V4L2 device path (/dev/videoN), instead of camera_index
    url: str | None = None  # stream: rtsp://, http(s)://, udp://, tcp://, rtmp://, srt:// (OpenCV's FFmpeg)
    pipeline: str | None = None  # gstreamer: a pipeline ending in appsink, where OpenCV has GStreamer
    timeout_s: Annotated[float, Range(0.1, 600)] = 10.0  # stream: opening, and each frame, give up after this long
    width: ImageSide | None = None  # requested camera size / synthetic size
    height: ImageSide | None = None
    fps: FrameRate | None = None  # images and synthetic: frame rate of the timeline; camera: requested
    loop: bool = False
    count: PositiveInt | None = None  # synthetic: frames before the end (None: endless)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.kind in ("video", "images", "recording", "ros2") and self.path is None:
            raise ValueError(f"source kind {self.kind!r} needs a path")
        if self.kind == "stream" and not (self.url and is_stream_url(self.url)):
            raise ValueError("source kind 'stream' needs a url: rtsp://, http(s)://, udp://, tcp://, rtmp:// or srt://")
        if self.kind == "gstreamer" and not self.pipeline:
            raise ValueError("source kind 'gstreamer' needs a pipeline")


class FrameSource:
    """Iterate frames with read(); None means the source has ended."""

    fps: float | None = None
    bad_frames: int = 0
    description: str = ""
    paced_by_device = False  # a camera delivers frames in real time by itself: never sleep for it

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoFileSource(FrameSource):
    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video {self.path}: file not found")
        self.loop = loop
        self._capture = self._open()
        ok, first = self._capture.read()
        if not ok or first is None:
            raise SourceError(f"video {self.path}: no frame could be decoded (corrupt or unsupported file)")
        if max(first.shape[:2]) > MAX_IMAGE_SIDE:
            raise SourceError(f"video {self.path}: frames of {first.shape[1]}x{first.shape[0]} exceed the largest side "
                              f"a frame may have, {MAX_IMAGE_SIDE}")
        self._pending: np.ndarray | None = first
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._index = 0
        self._media_offset_ns = 0
        self.description = f"video {self.path.name} {first.shape[1]}x{first.shape[0]} @ {self.fps or '?'} fps"

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise SourceError(f"video {self.path}: cannot open (corrupt or unsupported container/codec)")
        return capture

    def _media_ns(self) -> int:
        period = 1e9 / self.fps if self.fps else 0
        return self._media_offset_ns + int(round(self._index * period))

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
        else:
            ok, frame = self._capture.read(out) if out is not None else self._capture.read()
            if not ok or frame is None:
                if self.frame_count and self._index < self.frame_count - 1:
                    # Containers often overstate their length by a frame or two; more is damage.
                    self.bad_frames += self.frame_count - self._index
                    log.warning("video %s ended at frame %d of %d (damaged file?)", self.path, self._index, self.frame_count)
                if not self.loop:
                    return None
                self._media_offset_ns = self._media_ns() + (int(1e9 / self.fps) if self.fps else 0)
                self._index = 0
                self._capture.release()
                self._capture = self._open()
                ok, frame = self._capture.read()
                if not ok:
                    raise SourceError(f"video {self.path}: cannot decode its first frame on loop")
                return frame, self._media_ns()
            self._index += 1
        return frame, self._media_ns()

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource(FrameSource):
    def __init__(self, path: Path, fps: float | None, loop: bool) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"image folder {self.path}: not a directory")
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"image folder {self.path}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.fps = fps
        self.loop = loop
        self._position = 0
        self._emitted = 0
        self.description = f"images {self.path} ({len(self.files)} files)"

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        while True:
            if self._position >= len(self.files):
                if not self._emitted:  # every file was bad: playing nothing is not a success
                    raise SourceError(f"image folder {self.path}: none of its {len(self.files)} images could be "
                                      f"decoded (first: {self.files[0].name})")
                if not self.loop:
                    return None
                self._position = 0
            path = self.files[self._position]
            self._position += 1
            try:
                frame = decode_compressed(path.read_bytes(), "an image")
            except (OSError, ValueError) as exc:
                self.bad_frames += 1
                log.warning("image %s: %s, skipped", path, getattr(exc, "strerror", None) or exc)
                continue
            media_ns = int(round(self._emitted * 1e9 / self.fps)) if self.fps else 0
            self._emitted += 1
            return frame, media_ns


class SyntheticSource(FrameSource):
    """A moving test pattern with the frame index marked in it (write_frame_index), so receivers
    can check they got the frame they were told about."""

    def __init__(self, width: int, height: int, fps: float | None, count: int | None, loop: bool) -> None:
        self.width, self.height = width, height
        self.fps = fps
        self.count = count
        self.loop = loop
        self._index = 0
        yy, xx = np.mgrid[0:height, 0:width]
        self._base = np.dstack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), np.zeros_like(xx)]).astype(np.uint8)
        self.description = f"synthetic {width}x{height}"

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        if self.count is not None and self._index >= self.count:
            if not self.loop:
                return None
        frame = out if out is not None and out.shape == self._base.shape else np.empty_like(self._base)
        np.copyto(frame, self._base)
        shift = (self._index * 8) % self.width
        frame[:, shift : shift + 8, 2] = 255
        write_frame_index(frame, self._index)
        media_ns = int(round(self._index * 1e9 / self.fps)) if self.fps else 0
        self._index += 1
        return frame, media_ns


class RecordingSource(FrameSource):
    """Frames of an MCAP recording (perception.recording), with their recorded media time."""

    def __init__(self, path: Path, loop: bool) -> None:
        from perception.recording import RecordingError
        from perception.recording_reader import RecordingReader

        try:
            self._reader = RecordingReader(path)
        except RecordingError as exc:
            raise SourceError(str(exc)) from None
        self.path = Path(path)
        self.loop = loop
        self._frames = self._reader.frames()
        self._offset_ns = 0
        self._last_ns = 0
        self._delivered = 0
        self.description = f"recording {self.path.name}"

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        from perception.recording import RecordingError

        try:
            item = next(self._frames, None)
            if item is None and self.loop:
                self._offset_ns = self._last_ns + 1
                self._frames = self._reader.frames()
                item = next(self._frames, None)
        except RecordingError as exc:
            raise SourceError(str(exc)) from None
        if item is None:
            if not self._delivered:  # a recording made without frames, or cut short before its first chunk
                cut = " (cut short)" if self._reader.truncated else ""
                raise SourceError(f"recording {self.path}: no frames in it{cut}")
            return None
        self._delivered += 1
        header, pixels = item
        self._last_ns = self._offset_ns + header.media_ns
        return pixels, self._last_ns


class Ros2BagSource(FrameSource):
    """Frames of a ROS 2 bag's image topic (perception.ros2bag), each at its header stamp, or at the
    bag's receive time when the first message's stamp was never set (one clock for the whole bag:
    stamps from two clocks would make the timeline jump). A message that does not decode, or whose
    stamp is unset where the bag's others are set, is counted in bad_frames and skipped."""

    def __init__(self, path: Path, topic: str | None) -> None:
        from perception.ros2bag import Ros2BagError, choose_topic, image_messages, is_ros2_bag

        if not is_ros2_bag(path):
            raise SourceError(f"ROS 2 bag {path}: not a bag directory (no metadata.yaml in it)")
        try:
            self.topic = choose_topic(path, topic)
        except Ros2BagError as exc:
            raise SourceError(str(exc)) from None
        self.path = Path(path)
        self._messages = image_messages(self.path, self.topic)
        self._delivered = 0
        self._header_stamps: bool | None = None  # decided by the first message
        self.description = f"ROS 2 bag {self.path.name} {self.topic}"

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        from perception.ros2bag import Ros2BagError, decode_image, header_stamp_ns

        try:
            for bag_ns, message, msgtype in self._messages:
                try:
                    if isinstance(message, Exception):
                        raise ValueError(f"a message that does not deserialize ({message})")
                    frame = decode_image(message, msgtype)
                    stamp = header_stamp_ns(message)
                    if self._header_stamps is None:
                        self._header_stamps = stamp > 0
                        if not self._header_stamps:
                            log.warning("%s: its first image has no header stamp: the bag's receive times are "
                                        "the media times", self.description)
                    if self._header_stamps and stamp <= 0:
                        raise ValueError("an image without a header stamp among stamped ones")
                except ValueError as exc:
                    self.bad_frames += 1
                    log.warning("%s: skipped %s at bag time %d", self.description, exc, bag_ns)
                    continue
                self._delivered += 1
                return frame, stamp if self._header_stamps else int(bag_ns)
        except Ros2BagError as exc:
            raise SourceError(str(exc)) from None
        if not self._delivered:
            raise SourceError(f"ROS 2 bag {self.path}: no decodable image on {self.topic}")
        return None


def write_frame_index(frame: np.ndarray, index: int) -> None:
    """Mark bits 0..15 of `index` as black/white 8x8 blocks in the top-left 64x16 pixels.
    Blocks aligned to JPEG's 8x8 grid survive lossy video compression."""
    for bit in range(16):
        row, col = divmod(bit, 8)
        frame[row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] = 255 if (index >> bit) & 1 else 0


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of write_frame_index."""
    index = 0
    for bit in range(16):
        row, col = divmod(bit, 8)
        if frame[row * 8 + 2 : row * 8 + 6, col * 8 + 2 : col * 8 + 6].mean() > 127:
            index |= 1 << bit
    return index


def open_source(config: SourceConfig) -> FrameSource:  # a live source is a FrameSource in all but name
    if config.kind == "video":
        return VideoFileSource(config.path, config.loop)  # type: ignore[arg-type]
    if config.kind == "camera":
        return open_camera(config.camera_index, config.device, config.width, config.height, config.fps)
    if config.kind == "stream":
        return open_stream(config.url, config.timeout_s)  # type: ignore[arg-type]
    if config.kind == "gstreamer":
        return open_gstreamer(config.pipeline)  # type: ignore[arg-type]
    if config.kind == "images":
        return ImageFolderSource(config.path, config.fps, config.loop)  # type: ignore[arg-type]
    if config.kind == "recording":
        return RecordingSource(config.path, config.loop)  # type: ignore[arg-type]
    if config.kind == "ros2":
        return Ros2BagSource(config.path, config.topic)  # type: ignore[arg-type]
    return SyntheticSource(config.width or 640, config.height or 480, config.fps or 30.0, config.count, config.loop)
