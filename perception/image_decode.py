"""Compressed images (JPEG, PNG) decoded only when their size is one a frame may have.

A JPEG of a few hundred bytes can declare 65,535 x 65,535 pixels, and OpenCV allocates what the
header declares before it reads a pixel (up to 2^30 pixels by default, 3 GB in BGR): one such image
in a bag, a recording or an image folder would take a capture process's memory. The size is read
from the JPEG frame header or the PNG IHDR first, and an image larger than MAX_IMAGE_SIDE a side is a
ValueError before any decoding. Other formats OpenCV reads are decoded, then checked.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from perception.messages import MAX_IMAGE_SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...): not DHT (C4), JPG (C8), DAC (CC).
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])  # TEM, RSTn, SOI: no length follows
JPEG_START_OF_SCAN = 0xDA


def encoded_size(data: bytes | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(width, height) a JPEG or PNG declares, read without decoding; None for another format or a
    header that ends early (the decoder then says what is wrong)."""
    data = bytes(data[:65_536]) if not isinstance(data, bytes) else data  # a frame header lies near the start
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None  # not at a marker: damaged
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker == JPEG_START_OF_SCAN:
            return None  # entropy-coded data before any frame header
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        position += 2 + length
    return None


def decode_compressed(data: bytes | memoryview | np.ndarray, what: str) -> np.ndarray:
    """HxWx3 BGR uint8 pixels of a compressed image; ValueError (one line, `what` naming the image)
    when it does not decode or is larger than a frame may be."""
    size = encoded_size(data)
    if size is not None and max(size) > MAX_IMAGE_SIDE:
        raise ValueError(f"{what} of {size[0]}x{size[1]} pixels: larger than a frame may be ({MAX_IMAGE_SIDE} a side); "
                         f"not decoded")
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    except cv2.error:
        pixels = None
    if pixels is None:
        raise ValueError(f"{what} that does not decode")
    if max(pixels.shape[:2]) > MAX_IMAGE_SIDE:
        raise ValueError(f"{what} of {pixels.shape[1]}x{pixels.shape[0]} pixels: larger than a frame may be "
                         f"({MAX_IMAGE_SIDE} a side)")
    return pixels
