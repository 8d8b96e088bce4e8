"""Compressed images decoded only when their size is one a frame may have.

A JPEG of a few hundred bytes can declare 65,535 x 65,535 pixels, and OpenCV allocates what a header
declares before it reads a pixel: one such image in a bag, a recording or an image folder would take
a capture process's memory. Two bounds, both at the largest frame (MAX_IMAGE_SIDE a side):

- JPEG and PNG, the formats recordings and ROS 2 bags carry: the size is read from the JPEG frame
  header (markers found as libjpeg finds them: garbage bytes and stuffed FF 00 skipped, segments
  skipped by their length) or the PNG IHDR, and an image over MAX_IMAGE_SIDE a side is refused before
  any decoding. One whose size cannot be read is refused too, not handed to a decoder that may read
  more into it than this parser did.
- Every other format OpenCV reads (TIFF, WebP, BMP... in an image folder): OpenCV's own pixel limit,
  `OPENCV_IO_MAX_IMAGE_PIXELS`, which perception/__init__.py sets to MAX_IMAGE_SIDE squared before
  OpenCV loads (OpenCV reads it once, when it loads; its default is 2^30 pixels, 3 GB in BGR).
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from perception.messages import MAX_IMAGE_SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4), JPG (C8), DAC (CC).
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length follows
JPEG_SCAN_OR_END = frozenset([0xDA, 0xD9])  # start of scan, end of image: no frame header after them


def encoded_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) a JPEG or PNG declares, read without decoding; None for another format or a
    header that cannot be read."""
    data = data if isinstance(data, bytes) else np.asarray(data, np.uint8).tobytes()
    if data.startswith(PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if not data.startswith(JPEG_START):
        return None
    position = 2
    while True:
        position = data.find(b"\xff", position)  # libjpeg skips anything before a marker
        if position < 0:
            return None
        while position < len(data) and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= len(data):
            return None
        marker = data[position]
        position += 1
        if marker == 0x00 or marker in JPEG_STANDALONE_MARKERS:  # a stuffed FF 00 is no marker
            continue
        if marker in JPEG_SCAN_OR_END or position + 2 > len(data):
            return None
        (length,) = struct.unpack(">H", data[position:position + 2])
        if length < 2:
            return None
        if marker in JPEG_FRAME_MARKERS:
            if position + 7 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 3:position + 7])
            return width, height
        position += length


def decode_compressed(data: bytes | memoryview | np.ndarray, what: str) -> np.ndarray:
    """HxWx3 BGR uint8 pixels of a compressed image; ValueError (one line, `what` naming the image)
    when it does not decode, is larger than a frame may be, or is a JPEG or PNG whose size cannot be read."""
    data = data if isinstance(data, bytes) else np.asarray(data, np.uint8).tobytes()
    size = encoded_size(data)
    if size is None and (data.startswith(JPEG_START) or data.startswith(PNG_SIGNATURE)):
        raise ValueError(f"{what} whose size cannot be read from its header; not decoded")
    if size is not None and max(size) > MAX_IMAGE_SIDE:
        raise ValueError(f"{what} of {size[0]}x{size[1]} pixels: larger than a frame may be ({MAX_IMAGE_SIDE} a side); "
                         f"not decoded")
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except cv2.error:  # OpenCV's pixel limit (OPENCV_IO_MAX_IMAGE_PIXELS) among others
        pixels = None
    if pixels is None:
        raise ValueError(f"{what} that does not decode (or declares more pixels than a frame may have)")
    if max(pixels.shape[:2]) > MAX_IMAGE_SIDE:
        raise ValueError(f"{what} of {pixels.shape[1]}x{pixels.shape[0]} pixels: larger than a frame may be "
                         f"({MAX_IMAGE_SIDE} a side)")
    return pixels
