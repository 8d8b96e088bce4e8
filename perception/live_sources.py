"""Live sources: a camera by index or V4L2 device path, a network stream through OpenCV's FFmpeg
backend (rtsp://, http(s)://, udp://, tcp://, rtmp://, srt://), a GStreamer pipeline where this
OpenCV has GStreamer.

A live source paces itself (it delivers in real time) and its timeline is when frames arrived.
One that cannot be opened or read now raises DeviceError, which the capture node turns into an
exit the launcher retries with its growing delays (a stream that drops is opened again, and the
watchdog sees the gap in frames meanwhile); one that can never work here (GStreamer missing, a URL
of a scheme FFmpeg is not asked to read) is a SourceError, not retried.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from perception.latency import now_ns

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")


class SourceError(RuntimeError):
    """A source cannot be opened or read at all."""


class DeviceError(SourceError):
    """A camera or stream cannot be opened or read now; unlike a missing or corrupt file, it may come back."""


def is_stream_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in STREAM_SCHEMES and "://" in text


def shown(url: str) -> str:
    """`url` as logs may show it: a password in it replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def has_gstreamer() -> bool:
    return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


class LiveSource:
    """Frames from a cv2.VideoCapture that delivers in real time; media time is arrival time since
    the first frame (a stream's own timestamps restart when it reconnects)."""

    fps: float | None = None
    bad_frames: int = 0
    paced_by_device = True

    def __init__(self, capture: cv2.VideoCapture, description: str, what_failed: str) -> None:
        if not capture.isOpened():
            capture.release()
            raise DeviceError(f"{description}: cannot open ({what_failed})")
        self._capture = capture
        self.description = description
        reported = capture.get(cv2.CAP_PROP_FPS)
        self.fps = reported if reported and 0 < reported <= 1000 else None
        self._start_ns: int | None = None

    def read(self, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
        ok, frame = self._capture.read(out) if out is not None else self._capture.read()
        if not ok or frame is None:
            self.bad_frames += 1
            raise DeviceError(f"{self.description}: no frame (unplugged, or the stream dropped)")
        now = now_ns()
        self._start_ns = self._start_ns if self._start_ns is not None else now
        return frame, now - self._start_ns

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_camera(index: int, device: Path | None, width: int | None, height: int | None,
                fps: float | None) -> LiveSource:
    """A camera by OpenCV index, or by V4L2 device path (/dev/videoN), with the size and rate asked for."""
    if device is not None:
        if not Path(device).exists():
            raise DeviceError(f"camera {device}: no such device")
        capture = cv2.VideoCapture(str(device), cv2.CAP_V4L2)
        description = f"camera {device}"
    else:
        capture = cv2.VideoCapture(index)
        description = f"camera {index}"
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height), (cv2.CAP_PROP_FPS, fps)):
        if value:
            capture.set(prop, value)
    source = LiveSource(capture, description, "no such device, or it is busy")
    source.fps = source.fps or fps
    return source


def open_stream(url: str, timeout_s: float) -> LiveSource:
    """A network stream through FFmpeg; opening and each read give up after `timeout_s`."""
    if not is_stream_url(url):
        raise SourceError(f"stream {shown(url)}: not a URL of {', '.join(s + '://' for s in STREAM_SCHEMES)}")
    ms = int(timeout_s * 1000)
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    return LiveSource(capture, f"stream {shown(url)}",
                      f"no server answered with a stream FFmpeg reads within {timeout_s:g} s")


def open_gstreamer(pipeline: str) -> LiveSource:
    """A GStreamer pipeline ending in an appsink, where this OpenCV was built with GStreamer."""
    if not has_gstreamer():
        raise SourceError("gstreamer source: this OpenCV was built without GStreamer (cv2.getBuildInformation()); "
                          "read the stream by its URL through FFmpeg instead (kind: stream)")
    return LiveSource(cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), "gstreamer pipeline",
                      "the pipeline did not start (gst-launch-1.0 it to see why)")
