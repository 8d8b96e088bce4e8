"""ROS 2 bags, both ways, with `rosbags` (pure Python, no ROS install; the `ros2` extra).

In: a ROS 2 bag directory (metadata.yaml beside sqlite3 or MCAP storage) whose chosen topic carries
`sensor_msgs/msg/Image` or `CompressedImage` is a frame source (Ros2BagSource): each frame keeps its
header stamp as its media time (the bag's receive times for a bag whose first image has no stamp:
one clock per bag), so a drive recorded from a bag, and a replay of it, run on the bag's own timeline.

Out: convert_to_ros2 writes a recording's frames (`sensor_msgs/msg/CompressedImage`, the recorded
JPEG bytes as they are), its detections (`vision_msgs/msg/Detection2DArray`: class names as
class_id, scores, track ids as the detection id) and decisions (`perception_msgs/msg/Decision`,
defined below and stored in the bag) on the frames' media times.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from perception.image_decode import decode_compressed
from perception.messages import MAX_IMAGE_SIDE

IMAGE_TYPES = ("sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image")
IMAGE_TOPIC = "/camera/image/compressed"
DETECTIONS_TOPIC = "/perception/detections"
DECISIONS_TOPIC = "/perception/decisions"
CAMERA_FRAME = "camera"
EXTRA = "ROS 2 bags need the ros2 extra: pip install 'perception[ros2]'"

# vision_msgs 4.x (ROS 2 Humble and later), Apache-2.0: the definitions the bag stores with its detections.
VISION_MSGS = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/Detection2D": ("std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                                    "vision_msgs/BoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}
# This project's decision, for ROS 2: what the decision node (or the watchdog's fail-safe) decided for a frame.
PERCEPTION_MSGS = {
    "perception_msgs/msg/Decision": (
        "std_msgs/Header header\n"
        "uint64 frame_id\n"
        "string action\n"  # PROCEED, SLOW or BRAKE
        "string reason\n"
        "string decided_by\n"
        "string detail\n"
        "bool failsafe\n"
        "string target_class\n"  # empty: no target
        "float64 target_score\n"
        "vision_msgs/BoundingBox2D target_bbox\n"
        "float64 time_to_collision_s\n"  # -1: not closing
    ),
}


class Ros2BagError(ValueError):
    """A bag that cannot be read as asked: one line naming it."""


def rosbags_modules():  # noqa: ANN202 - the rosbags modules
    try:
        from rosbags import rosbag2, typesys
    except ImportError:
        raise Ros2BagError(EXTRA) from None
    return rosbag2, typesys


def typestore():  # noqa: ANN201 - a rosbags Typestore with vision_msgs and perception_msgs registered
    _, typesys = rosbags_modules()
    store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    for name, text in {**VISION_MSGS, **PERCEPTION_MSGS}.items():
        store.register(typesys.get_types_from_msg(text, name))
    return store


def is_ros2_bag(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "metadata.yaml").is_file()


def image_topics(path: Path) -> dict[str, tuple[str, int]]:
    """Image topics of the bag at `path`: name -> (message type, message count)."""
    with _open(path) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections if c.msgtype in IMAGE_TYPES}


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """The bag at `path`, open for reading (a rosbags Reader), closed afterwards."""
    rosbag2, _ = rosbags_modules()
    try:
        reader = rosbag2.Reader(Path(path))
        reader.open()
    except Exception as exc:  # rosbags' own error types, or a damaged database: one line naming the bag
        raise Ros2BagError(f"ROS 2 bag {path}: cannot be read ({_first_line(exc)})") from None
    try:
        yield reader
    finally:
        reader.close()


def choose_topic(path: Path, topic: str | None) -> str:
    """`topic`, checked to be an image topic of the bag, or the bag's only image topic."""
    with _open(path) as reader:
        every = {c.topic: c.msgtype for c in reader.connections}
    images = sorted(t for t, kind in every.items() if kind in IMAGE_TYPES)
    shown = ", ".join(f"{t} ({k})" for t, k in sorted(every.items())) or "none"
    if topic is not None:
        if topic not in every:
            raise Ros2BagError(f"ROS 2 bag {path}: no topic {topic} (its topics: {shown})")
        if topic not in images:
            raise Ros2BagError(f"ROS 2 bag {path}: {topic} is {every[topic]}, not sensor_msgs/msg/Image or CompressedImage")
        return topic
    if len(images) != 1:
        what = "no image topic" if not images else f"{len(images)} image topics, choose one with --topic"
        raise Ros2BagError(f"ROS 2 bag {path}: {what} (its topics: {shown})")
    return images[0]


def decode_image(message: Any, msgtype: str) -> np.ndarray:
    """A sensor_msgs image as an HxWx3 BGR uint8 frame; ValueError (one line) for what it cannot be."""
    if msgtype == "sensor_msgs/msg/CompressedImage":
        return decode_compressed(np.asarray(message.data, np.uint8), f"a CompressedImage ({message.format})")
    encoding, height, width, step = message.encoding.lower(), message.height, message.width, message.step
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
        raise ValueError(f"an Image of {width}x{height} pixels (a frame has 1 to {MAX_IMAGE_SIDE} a side)")
    channels = {"bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}.get(encoding)
    if channels is None:
        raise ValueError(f"an Image of encoding {message.encoding!r} (this source takes 8-bit mono, RGB, BGR, RGBA, BGRA)")
    data = np.asarray(message.data, np.uint8)
    if step < width * channels or len(data) < step * height:
        raise ValueError(f"an Image {width}x{height} {encoding} with step {step} and {len(data)} bytes")
    pixels = data[:step * height].reshape(height, step)[:, :width * channels].reshape(height, width, channels)
    conversion = {"rgb8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGBA2BGR, "bgra8": cv2.COLOR_BGRA2BGR,
                  "mono8": cv2.COLOR_GRAY2BGR, "8uc1": cv2.COLOR_GRAY2BGR}.get(encoding)
    return cv2.cvtColor(pixels, conversion) if conversion is not None else np.ascontiguousarray(pixels)


def header_stamp_ns(message: Any) -> int:
    """The message's header stamp in ns (0: never set)."""
    stamp = message.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_messages(path: Path, topic: str) -> Iterator[tuple[int, Any, str]]:
    """(bag time ns, deserialized message or the exception that stopped it, message type) per
    message of `topic`, in bag order."""
    store = typestore()
    with _open(path) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        messages = reader.messages(connections=connections)
        while True:
            try:
                connection, bag_ns, raw = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # the storage itself damaged: the bag ends here, said in one line
                raise Ros2BagError(f"ROS 2 bag {path}: cannot be read on ({_first_line(exc)})") from None
            try:
                yield bag_ns, store.deserialize_cdr(raw, connection.msgtype), connection.msgtype
            except Exception as exc:  # a damaged message: the caller counts and skips it
                yield bag_ns, exc, connection.msgtype


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


@dataclasses.dataclass
class ConvertResult:
    images: int = 0
    detections: int = 0
    decisions: int = 0
    unplaced: int = 0  # decisions of frames the recording has neither a frame header nor detections of
