"""ROS 2 bags both ways: a drive converted to a bag replays to the same decisions; a bag's image
topic is a source on the bag's own timeline; real bags written by ROS 2 itself are read, and a bag
without images is one line listing what it has."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from samples import jpeg_declaring
from perception import REPO
from perception.recording_reader import RecordingReader
from perception.sources import Ros2BagSource, SourceError
from perception.topics import DETECTIONS

rosbags = pytest.importorskip("rosbags")
from perception.convert import convert_to_ros2  # noqa: E402
from perception.detection.classes import COCO_CLASSES, read_class_names  # noqa: E402
from perception.ros2bag import DECISIONS_TOPIC, DETECTIONS_TOPIC, IMAGE_TOPIC, typestore  # noqa: E402

APPROACH = REPO / "recordings" / "udacity_approach.mcap"
REFERENCE = REPO / "recordings" / "udacity_approach.reference.jsonl"
# Written by ROS 2's own rosbag2 (ros2/rosbag2, rosbag2_py/test/resources/*/talker, Apache-2.0): tests/data/README.md
TALKER = {"sqlite3": REPO / "tests/data/ros2/talker_sqlite3", "mcap": REPO / "tests/data/ros2/talker_mcap"}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perception.cli", *args], capture_output=True, text=True, timeout=timeout)


def read_bag(path):  # noqa: ANN001, ANN201
    store = typestore()
    with rosbags.rosbag2.Reader(path) as reader:
        return {c.topic: [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(connections=[c])]
                for c in reader.connections}


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_drive_converted_to_a_bag_carries_its_images_detections_and_decisions(tmp_path, storage):
    bag = tmp_path / "bag"
    result = cli("convert", str(APPROACH), str(bag), "--to", "ros2", "--storage", storage)
    assert result.returncode == 0, result.stderr
    topics = read_bag(bag)
    assert {t: len(m) for t, m in topics.items()} == {IMAGE_TOPIC: 60, DETECTIONS_TOPIC: 60, DECISIONS_TOPIC: 60}
    recorded = list(RecordingReader(APPROACH).encoded_frames())
    for (header, _, jpeg), image in zip(recorded, topics[IMAGE_TOPIC]):  # the recorded JPEG, byte for byte
        assert bytes(image.data) == jpeg and image.format == "jpeg"
        assert image.header.stamp.sec * 10**9 + image.header.stamp.nanosec == header.media_ns
    names = read_class_names(COCO_CLASSES)
    detections = {d.frame_id: d for _, _, d in RecordingReader(APPROACH).messages({DETECTIONS})}
    last = detections[60]
    array = topics[DETECTIONS_TOPIC][-1]
    assert [d.results[0].hypothesis.class_id for d in array.detections] == [names[c] for c in last.class_ids]
    assert np.allclose([d.results[0].hypothesis.score for d in array.detections], last.scores)
    assert [d.id for d in array.detections] == [str(t) if t else "" for t in last.track_ids]
    x1, y1, x2, y2 = last.boxes[0]
    box = array.detections[0].bbox
    assert np.allclose([box.center.position.x, box.center.position.y, box.size_x, box.size_y],
                       [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-3)
    actions = [d.action for d in topics[DECISIONS_TOPIC]]
    assert set(actions) == {"PROCEED", "SLOW", "BRAKE"}


def test_the_bag_replays_through_the_pipeline_to_the_recordings_own_decisions(tmp_path):
    bag = tmp_path / "bag"
    convert_to_ros2(APPROACH, bag, read_class_names(COCO_CLASSES))
    result = cli("replay", str(bag), "--speed", "max", "--compare", str(REFERENCE))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"compare with {REFERENCE}: 0 difference(s) over 60 frames" in result.stdout


def write_image_bag(path, images):  # noqa: ANN001
    """A bag of sensor_msgs/msg/Image on /cam: (stamp ns, encoding, pixels) each."""
    store = typestore()
    types = store.types
    with rosbags.rosbag2.Writer(path, version=8) as writer:
        connection = writer.add_connection("/cam", "sensor_msgs/msg/Image", typestore=store)
        other = writer.add_connection("/cam2", "sensor_msgs/msg/CompressedImage", typestore=store)
        for bag_ns, (stamp, encoding, pixels) in enumerate(images, 1):
            height, width = pixels.shape[:2]
            header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9,
                                                  nanosec=stamp % 10**9), frame_id="cam")
            message = types["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding=encoding,
                                                     is_bigendian=0, step=pixels.strides[0], data=pixels.reshape(-1).view(np.uint8))
            writer.write(connection, bag_ns * 1000, store.serialize_cdr(message, connection.msgtype))
        del other  # a second image topic, empty: the source must be told which


def test_raw_images_become_bgr_frames_at_their_header_stamps_and_a_bad_one_is_counted_and_skipped(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red, in RGB order
    mono = np.full((4, 6), 77, np.uint8)
    depth = np.zeros((4, 6), np.uint16)
    bag = tmp_path / "bag"
    write_image_bag(bag, [(1_700_000_000_000_000_000, "rgb8", rgb), (1_700_000_000_050_000_000, "16UC1", depth),
                          (0, "mono8", mono), (1_700_000_000_150_000_000, "mono8", mono)])
    with pytest.raises(SourceError, match=r"2 image topics, choose one with --topic \(its topics: /cam \(sensor_msgs/msg/Image\), "
                                          r"/cam2 \(sensor_msgs/msg/CompressedImage\)\)"):
        Ros2BagSource(bag, None)
    source = Ros2BagSource(bag, "/cam")
    first, second, end = source.read(), source.read(), source.read()
    assert first[1] == 1_700_000_000_000_000_000 and first[0][0, 0].tolist() == [0, 0, 200]  # BGR
    assert second[1] == 1_700_000_000_150_000_000 and second[0][0, 0].tolist() == [77, 77, 77]
    # 16UC1, and an image without a stamp among stamped ones (a second clock): both skipped, said in the log
    assert end is None and source.bad_frames == 2


def test_a_bag_whose_images_carry_no_stamps_runs_on_its_receive_times(tmp_path):
    mono = np.full((4, 6), 77, np.uint8)
    bag = tmp_path / "bag"
    write_image_bag(bag, [(0, "mono8", mono), (0, "mono8", mono), (1_700_000_000_000_000_000, "mono8", mono)])
    source = Ros2BagSource(bag, "/cam")
    assert [source.read()[1] for _ in range(3)] == [1000, 2000, 3000]  # one clock for the bag: its own
    assert source.read() is None and source.bad_frames == 0


def test_a_compressed_image_without_bytes_or_too_large_is_counted_and_skipped(tmp_path):
    store = typestore()
    types = store.types
    bag = tmp_path / "bag"
    with rosbags.rosbag2.Writer(bag, version=8) as writer:
        connection = writer.add_connection("/cam", "sensor_msgs/msg/CompressedImage", typestore=store)
        for bag_ns, data in ((1, b""), (2, jpeg_declaring(60_000, 60_000)),
                             (3, cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())):
            header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
            message = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=np.frombuffer(data, np.uint8))
            writer.write(connection, bag_ns, store.serialize_cdr(message, connection.msgtype))
    source = Ros2BagSource(bag, None)
    frame, stamp = source.read()
    assert frame.shape == (8, 8, 3) and stamp == 3 and source.bad_frames == 2


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_real_ros2_bag_without_images_is_one_line_listing_its_topics(storage):
    result = cli("replay", str(TALKER[storage]), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"replay: ROS 2 bag {TALKER[storage]}: no image topic (its topics: /parameter_events "
        "(rcl_interfaces/msg/ParameterEvent), /rosout (rcl_interfaces/msg/Log), /topic (std_msgs/msg/String))"]
    with pytest.raises(SourceError, match=r"/topic is std_msgs/msg/String, not sensor_msgs/msg/Image or CompressedImage"):
        Ros2BagSource(TALKER[storage], "/topic")
