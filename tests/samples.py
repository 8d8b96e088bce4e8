"""Sample messages of every type, shared by the schema and recording tests, and hostile images."""

import struct

import cv2
import numpy as np

from perception.messages import (
    Action, Control, Decision, Detections, FrameHeader, FrameTransport, Heartbeat, NetworkPass, NodeState, Reason, Stamp,
    SystemState, Target, WatchdogStatus,
)
from perception.soak.faults import forged  # noqa: F401 - what a buggy or hostile publisher sends: the soak's, written once

STAMPS = (Stamp("capture", 1_000), Stamp("publish", 1_500))


def all_messages():
    return [
        FrameHeader(frame_id=7, capture_ns=1_000, stamps=STAMPS, media_ns=280_000_000, width=1280, height=720,
                    channels=3, transport=FrameTransport.SHM, ring="perception-x-capture-1", slot=3, seq=11),
        Detections(frame_id=7, capture_ns=1_000, stamps=STAMPS, media_ns=40_000_000, image_width=1280, image_height=720, exit_index=1,
                   exit_count=3, boxes=np.array([[1, 2, 3, 4], [5.5, 6, 7, 8]], np.float32),
                   scores=np.array([0.9, 0.25], np.float32), class_ids=np.array([0, 2], np.uint16),
                   track_ids=np.array([17, 0], np.uint32), velocities=np.array([[12.5, -3.0], [0, 0]], np.float32),
                   measured_by=NetworkPass(input_width=544, input_height=320, exit_index=1)),
        Detections(frame_id=8, capture_ns=2_000, image_width=640, image_height=480, exit_index=0, exit_count=1),
        Decision(frame_id=7, capture_ns=1_000, stamps=STAMPS, action=Action.BRAKE, reason=Reason.OBJECT_IN_PATH,
                 decided_by="decision", detail="car ahead, ttc 1.2 s",
                 target=Target(class_id=2, score=0.8, box=(1.0, 2.0, 3.0, 4.0), ttc_s=1.25)),
        Decision(frame_id=9, capture_ns=3_000, action=Action.PROCEED, reason=Reason.CLEAR, decided_by="decision"),
        Heartbeat(frame_id=7, capture_ns=1_000, node="detector", pid=1234, seq=99, sent_ns=5_000, state=NodeState.OK,
                  counters={"frames.in": 10, "frames.dropped": -1}),
        WatchdogStatus(frame_id=7, capture_ns=1_000, state=SystemState.DEGRADED, depth_limit=1,
                       nodes_down=("detector", "decision"), counters={"misses": 3}),
        Control(frame_id=7, capture_ns=1_000, target="detector", max_depth=1, reason="p99 near budget"),
        # a propagated frame: no network ran, tracks were moved by optical flow
        Detections(frame_id=9, capture_ns=3_000, image_width=640, image_height=480, exit_index=-1, exit_count=2,
                   boxes=np.array([[1, 2, 3, 4]], np.float32), scores=np.array([0.7], np.float32),
                   class_ids=np.array([0], np.uint16), track_ids=np.array([4], np.uint32),
                   measured_by=NetworkPass(input_width=416, input_height=320, exit_index=1)),
    ]


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real JPEG whose frame header was rewritten to claim `width` x `height`: a decompression bomb."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 24, 3), 90, np.uint8))[1].tobytes())
    start = data.index(b"\xff\xc0")  # baseline start of frame: length (2), precision (1), height, width
    data[start + 5:start + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    """An uncompressed 8-bit TIFF header claiming `width` x `height` with 64 bytes of data: OpenCV
    would allocate the declared pixels before finding the data missing."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, None),
               (277, 3, 1), (278, 4, height), (279, 4, 64)]  # (tag, type: 3 short / 4 long, value); 273: the data's offset
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if value is None else value
        ifd += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(64)
