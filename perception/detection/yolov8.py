"""Decoding Ultralytics YOLOv8/YOLO11 detection output: [1, 4 + classes, N], per anchor point the box
centre x, centre y, width and height in input pixels, then each class's score (already sigmoided;
there is no objectness). NMS is the same class-wise NMS as YOLOX's."""

from __future__ import annotations

import numpy as np

from perception.detection.yolox import Letterbox, grids, nms_per_class


def decode_yolov8(raw: np.ndarray, box: Letterbox, strides: tuple[int, ...], score_threshold: float = 0.3,
                  nms_threshold: float = 0.45, max_detections: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw output [1, 4+C, N] of the input `box` describes -> (boxes xyxy in frame pixels [K,4],
    scores [K], class ids [K]), as perception.detection.yolox.decode gives them."""
    anchors = len(grids(box.input_width, box.input_height, strides)[0])
    if raw.ndim != 3 or raw.shape[2] != anchors or raw.shape[1] < 5:
        raise ValueError(f"output {list(raw.shape)} is not [1, 4 + classes, {anchors}] for a "
                         f"{box.input_width}x{box.input_height} input with strides {tuple(strides)}")
    class_scores = raw[0, 4:]
    class_ids = class_scores.argmax(0)
    scores = class_scores[class_ids, np.arange(anchors)]
    keep = scores > score_threshold
    if not keep.any():
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint16)
    kept = raw[0][:4, keep].T  # [K, 4]: centre x, centre y, width, height
    centers, sizes = kept[:, :2], kept[:, 2:]
    boxes = np.concatenate((centers - sizes / 2, centers + sizes / 2), 1) / box.scale
    scores, class_ids = scores[keep], class_ids[keep]
    chosen = nms_per_class(boxes, scores, class_ids, nms_threshold)[:max_detections]
    boxes = boxes[chosen]  # clipped to the frame after NMS, as Ultralytics does: the same boxes survive
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, box.frame_width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, box.frame_height)
    return boxes.astype(np.float32), scores[chosen].astype(np.float32), class_ids[chosen].astype(np.uint16)
