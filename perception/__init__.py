"""perception: a low-latency autonomous perception pipeline."""

import os
from pathlib import Path

__version__ = "0.1.0"

# OpenCV allocates the pixels an image header declares before it reads one; it takes its limit from
# this variable once, when it loads, so it is set here, before any module of the package imports
# cv2: the largest frame (perception.messages.MAX_IMAGE_SIDE squared), not OpenCV's 2^30 (3 GB in
# BGR). perception/image_decode.py bounds JPEG and PNG by their headers as well. A value already
# set in the environment is kept.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(16384 * 16384))

# The checkout: bundled recordings, configs and launch files live beside the package (editable install).
REPO = Path(__file__).resolve().parents[1]
