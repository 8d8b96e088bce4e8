"""`perception convert DRIVE.mcap OUT_DIR --to ros2`: a recorded drive as a ROS 2 bag, for a ROS 2 stack
to play back or learn from (perception.ros2bag says what goes on which topic)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from perception.cli_args import add_classes_argument, output_taken, read_classes
from perception.detection.classes import class_name
from perception.recording import RecordingError
from perception.ros2bag import (
    CAMERA_FRAME, DECISIONS_TOPIC, DETECTIONS_TOPIC, IMAGE_TOPIC, ConvertResult, Ros2BagError, rosbags_modules, typestore,
)


def convert_to_ros2(recording: Path, out_dir: Path, class_names: list[str], storage: str = "sqlite3") -> ConvertResult:
    """Write the drive at `recording` as a ROS 2 bag at `out_dir` (which must not exist). Every
    message is stamped with its frame's media time, the bag's own timeline."""
    from perception.recording_reader import RecordingReader
    from perception.topics import DECISIONS, DETECTIONS

    rosbag2, _ = rosbags_modules()
    store = typestore()
    types = store.types
    plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
    media: dict[int, int] = {}  # frame id -> media time, from the frame headers
    result = ConvertResult()
    with rosbag2.Writer(out_dir, version=8, storage_plugin=plugin) as writer:
        images = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store)
        detections = writer.add_connection(DETECTIONS_TOPIC, "vision_msgs/msg/Detection2DArray", typestore=store)
        decisions = writer.add_connection(DECISIONS_TOPIC, "perception_msgs/msg/Decision", typestore=store)
        for header, image, raw in RecordingReader(recording).encoded_frames():
            if image.get("format") != "jpeg":
                raise Ros2BagError(f"{recording}: frames recorded as {image.get('format') or 'raw'}; convert takes "
                                   "JPEG recordings (perception record --image-format jpeg, the default)")
            media[header.frame_id] = header.media_ns
            message = types["sensor_msgs/msg/CompressedImage"](header=_header(types, header.media_ns), format="jpeg",
                                                                data=np.frombuffer(raw, np.uint8))
            writer.write(images, header.media_ns, store.serialize_cdr(message, images.msgtype))
            result.images += 1
        for topic, _, message in RecordingReader(recording).messages({DETECTIONS, DECISIONS}):
            if topic is DETECTIONS:
                media.setdefault(message.frame_id, message.media_ns)  # a frame the recorder did not keep
            stamp = media.get(message.frame_id)
            if stamp is None:  # a decision of a frame nothing else of the recording places in time
                result.unplaced += 1
                continue
            if topic is DETECTIONS:
                writer.write(detections, stamp, store.serialize_cdr(_detections(types, message, class_names, stamp),
                                                                      detections.msgtype))
                result.detections += 1
            else:
                writer.write(decisions, stamp, store.serialize_cdr(_decision(types, message, class_names, stamp),
                                                                   decisions.msgtype))
                result.decisions += 1
    return result


def _header(types, ns: int):  # noqa: ANN001, ANN202
    return types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000,
                                                                                  nanosec=ns % 1_000_000_000),
                                        frame_id=CAMERA_FRAME)


def _bbox(types, box) -> object:  # noqa: ANN001
    x1, y1, x2, y2 = (float(v) for v in box)
    center = types["vision_msgs/msg/Pose2D"](position=types["vision_msgs/msg/Point2D"](x=(x1 + x2) / 2, y=(y1 + y2) / 2),
                                             theta=0.0)
    return types["vision_msgs/msg/BoundingBox2D"](center=center, size_x=x2 - x1, size_y=y2 - y1)


def _detections(types, message, class_names: list[str], stamp: int):  # noqa: ANN001, ANN202
    pose = types["geometry_msgs/msg/PoseWithCovariance"](
        pose=types["geometry_msgs/msg/Pose"](position=types["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                                             orientation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36, np.float64))
    track_ids = message.track_ids if message.track_ids is not None else np.zeros(len(message.boxes), np.uint32)
    detections = [
        types["vision_msgs/msg/Detection2D"](
            header=_header(types, stamp),
            results=[types["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=types["vision_msgs/msg/ObjectHypothesis"](class_id=class_name(class_names, int(c)), score=float(s)),
                pose=pose)],
            bbox=_bbox(types, box), id=str(int(t)) if t else "")
        for box, s, c, t in zip(message.boxes, message.scores, message.class_ids, track_ids)]
    return types["vision_msgs/msg/Detection2DArray"](header=_header(types, stamp), detections=detections)


def _decision(types, message, class_names: list[str], stamp: int):  # noqa: ANN001, ANN202
    target = message.target
    return types["perception_msgs/msg/Decision"](
        header=_header(types, stamp), frame_id=message.frame_id, action=message.action.name, reason=message.reason.name,
        decided_by=message.decided_by, detail=message.detail, failsafe=message.failsafe,
        target_class=class_name(class_names, target.class_id) if target else "",
        target_score=float(target.score) if target else 0.0,
        target_bbox=_bbox(types, target.box if target else (0, 0, 0, 0)),
        time_to_collision_s=float(target.ttc_s) if target and target.ttc_s != float("inf") else -1.0)


def convert_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perception convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path, help="a drive recorded by perception record (MCAP)")
    parser.add_argument("output", type=Path, help="the ROS 2 bag directory to write (must not exist)")
    parser.add_argument("--to", choices=["ros2"], required=True, help="the format to write")
    parser.add_argument("--storage", choices=["sqlite3", "mcap"], default="sqlite3", help="the bag's storage (default sqlite3)")
    add_classes_argument(parser)
    args = parser.parse_args(argv)
    names = read_classes(args.classes, "convert")
    if names is None or output_taken(args.output, "convert"):
        return 2
    try:
        result = convert_to_ros2(args.recording, args.output, names, args.storage)
    except (RecordingError, Ros2BagError) as exc:
        print(f"convert: {exc}", file=sys.stderr)
        _remove(args.output)
        return 2
    except BaseException:  # anything else (a bug, Ctrl-C): no half-written bag is left to pass for one
        _remove(args.output)
        raise
    unplaced = f"; {result.unplaced} decisions left out: their frames are not in the recording" if result.unplaced else ""
    print(f"{args.output}: ROS 2 bag ({args.storage}), {result.images} images on {IMAGE_TOPIC}, {result.detections} "
          f"Detection2DArray on {DETECTIONS_TOPIC}, {result.decisions} decisions on {DECISIONS_TOPIC}{unplaced}")
    return 0


def _remove(path: Path) -> None:
    """A bag left half-written by a failed conversion is no bag: removed."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
