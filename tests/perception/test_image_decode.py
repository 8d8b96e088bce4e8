"""Compressed images whose header declares more pixels than a frame may have are refused before
any decoding (a tiny file could otherwise make the decoder allocate gigabytes)."""

import struct

import cv2
import numpy as np
import pytest

from perception.image_decode import decode_compressed, encoded_size
from perception.messages import MAX_IMAGE_SIDE
from samples import jpeg_declaring


def jpeg(width: int = 24, height: int = 16, **flags: int) -> bytes:
    params = [p for key, value in flags.items() for p in (getattr(cv2, key), value)]
    return cv2.imencode(".jpg", np.full((height, width, 3), 90, np.uint8), params)[1].tobytes()


def png_declaring(width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


@pytest.mark.parametrize("data, size", [
    (jpeg(), (24, 16)),
    (jpeg(40, 8, IMWRITE_JPEG_PROGRESSIVE=1), (40, 8)),  # a progressive frame header (SOF2)
    (cv2.imencode(".png", np.zeros((7, 5, 3), np.uint8))[1].tobytes(), (5, 7)),
    (b"GIF89a....", None),  # another format: decoded, then checked
    (b"\xff\xd8\xff", None),  # a JPEG that ends before its frame header
])
def test_the_declared_size_is_read_without_decoding(data, size):
    assert encoded_size(data) == size


@pytest.mark.parametrize("data, claimed", [(jpeg_declaring(60_000, 60_000), "60000x60000"),
                                           (png_declaring(MAX_IMAGE_SIDE + 1, 10), f"{MAX_IMAGE_SIDE + 1}x10")])
def test_an_image_declaring_more_than_a_frame_may_have_is_refused_before_decoding(data, claimed):
    with pytest.raises(ValueError, match=rf"^an image of {claimed} pixels: larger than a frame may be "
                                         rf"\({MAX_IMAGE_SIDE} a side\); not decoded$"):
        decode_compressed(data, "an image")


def test_a_good_image_decodes_and_a_broken_one_is_one_line():
    assert decode_compressed(jpeg(), "an image").shape == (16, 24, 3)
    with pytest.raises(ValueError, match=r"^a JPEG that does not decode$"):
        decode_compressed(b"\xff\xd8 not really", "a JPEG")
