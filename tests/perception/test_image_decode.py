"""Compressed images whose header declares more pixels than a frame may have are refused before
any decoding (a tiny file could otherwise make the decoder allocate gigabytes)."""

import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from perception.image_decode import decode_compressed, encoded_size
from perception.messages import MAX_IMAGE_SIDE
from helpers import REPO
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
    with pytest.raises(ValueError, match=r"^a JPEG that does not decode \(or declares more pixels than a frame may have\)$"):
        decode_compressed(jpeg()[:200], "a JPEG")  # its header whole, its data cut


@pytest.mark.parametrize("data", [
    b"\xff\xd8 not really",  # no frame header at all
    b"\xff\xd8\xff\xe0\x00\x01" + jpeg()[2:],  # a segment length below 2: the walk cannot go on
    jpeg()[:40],  # cut before its frame header
], ids=["no frame header", "bad segment length", "cut short"])
def test_a_jpeg_whose_size_cannot_be_read_is_not_handed_to_the_decoder(data):
    with pytest.raises(ValueError, match=r"^a JPEG whose size cannot be read from its header; not decoded$"):
        decode_compressed(data, "a JPEG")


def test_the_size_is_found_as_libjpeg_finds_it_past_garbage_and_stuffed_bytes():
    """A decoder skips garbage between segments and a stuffed FF 00; a parser that did not would
    miss the frame header (and decode unchecked) or read a fake one hidden in a segment."""
    bomb = jpeg_declaring(20_000, 20_000)
    assert encoded_size(bomb[:2] + b"\x00" + bomb[2:]) == (20_000, 20_000)  # a junk byte before the first marker
    fake = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 16, 24) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    payload = b"ab" + fake + b"cd"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(payload)) + payload
    hidden = bomb[:2] + b"\xff\x00" + struct.pack(">H", 8) + app1 + bomb[2:]  # FF 00 read as a segment would land on `fake`
    assert encoded_size(hidden) == (20_000, 20_000)
    # a frame header far in: a camera's EXIF and ICC data may come first, in a buffer of any type
    exif = b"\xff\xe1" + struct.pack(">H", 65_000) + bytes(64_998)
    assert encoded_size(np.frombuffer(bomb[:2] + exif + bomb[2:], np.uint8)) == (20_000, 20_000)


def test_opencv_is_capped_at_the_largest_frame_for_every_other_format():
    """TIFF, WebP and the rest are read by OpenCV, which checks the pixels declared against
    OPENCV_IO_MAX_IMAGE_PIXELS before allocating them; the package sets it before OpenCV loads (a
    fresh process: this one may have loaded OpenCV first)."""
    code = ("import nodes, cv2, numpy as np; from samples import tiff_declaring\n"
            "from perception.image_decode import decode_compressed\n"
            "try:\n    cv2.imdecode(np.frombuffer(tiff_declaring(17_000, 17_000), np.uint8), cv2.IMREAD_COLOR)\n"
            "except cv2.error as exc:\n    print('CV_IO_MAX_IMAGE_PIXELS' in str(exc))\n"
            "try:\n    decode_compressed(tiff_declaring(17_000, 17_000), 'an image')\n"
            "except ValueError as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert perception_cap() == str(MAX_IMAGE_SIDE ** 2)  # the package's literal is the largest frame
    # OpenCV's own limit refused it before allocating (its default, 2^30 pixels, lets 17,000 squared through)
    assert result.stdout.splitlines() == ["True", "an image that does not decode (or declares more pixels than a frame "
                                          "may have)"], result.stdout + result.stderr


def perception_cap() -> str:
    """What the package sets OpenCV's limit to in a fresh process with none set."""
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    return subprocess.run([sys.executable, "-c", "import os, perception; print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env).stdout.strip()
