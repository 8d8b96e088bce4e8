"""Check the Ultralytics (YOLOv8 / YOLO11) output layout against Ultralytics' own predictions.

Exports a real Ultralytics detection model to ONNX with Ultralytics' exporter, runs Ultralytics'
own predictor on that ONNX file and this project's detector (the manifest inferred from the same
file) on the same square frame, and matches their detections one to one. The frame is square and
resized to the input, so neither letterbox pads: both networks see the same tensor.

Ultralytics is AGPL-3.0 and not a dependency of this project: run this in an environment of its
own, with this repository on the path:

    python3.11 -m venv /tmp/ulv && /tmp/ulv/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxruntime onnxslim
    PYTHONPATH=. YOLO_OFFLINE=1 /tmp/ulv/bin/python scripts/check_ultralytics_layout.py [--weights yolov8n.pt] [--json OUT]

Without --weights (pretrained weights are a download this machine cannot make) the model is built
from Ultralytics' architecture file (yolov8n.yaml, yolo11n.yaml) with seeded random weights, batch
norm measured on the frame and class logits drawn around 0, so that scores and boxes vary: the layout,
the preprocessing (RGB, 0-1) and the decoding are what is checked, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIDE = 640


def square_frame(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path))
    side = min(frame.shape[:2])
    top, left = (frame.shape[0] - side) // 2, (frame.shape[1] - side) // 2
    return cv2.resize(frame[top:top + side, left:left + side], (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def export(architecture: str, weights: Path | None, folder: Path, frame: np.ndarray) -> Path:
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(str(weights) if weights else architecture)
    if weights is None:
        head = model.model.model[-1]
        for branch in head.cv3:  # class logits spread around 0, instead of Ultralytics' prior of near-zero scores
            torch.nn.init.normal_(branch[-1].weight, std=branch[-1].weight[0].numel() ** -0.5)
            torch.nn.init.zeros_(branch[-1].bias)
        # Random layers shrink activations to ~1e-6 by the head: batch-norm statistics measured on the
        # frame (and its mirror image) keep them at unit scale, so scores and boxes vary from anchor to anchor.
        for module in model.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a plain average over the batches
                module.reset_running_stats()
        model.model.train()
        image = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
        with torch.no_grad():
            model.model(torch.cat([image, image.flip(3)]))
        model.model.eval()
    cwd = Path.cwd()
    try:
        os.chdir(folder)  # a model built from an architecture file is exported into the working directory
        return Path(model.export(format="onnx", imgsz=SIDE, dynamic=False, simplify=False)).resolve()
    finally:
        os.chdir(cwd)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def compare(onnx_path: Path, frame: np.ndarray, conf: float, nms: float) -> dict:
    from ultralytics import YOLO

    from perception.decision import DecisionRules
    from perception.detection.builder import DetectorSettings, build_network
    from perception.detection.risk import RiskConfig
    from perception.engines import EngineConfig

    reference = YOLO(str(onnx_path), task="detect").predict(frame, imgsz=SIDE, conf=conf, iou=nms, verbose=False)[0].boxes
    ref_boxes, ref_scores, ref_classes = (reference.xyxy.numpy(), reference.conf.numpy(), reference.cls.numpy().astype(int))
    settings = DetectorSettings(model=onnx_path, engine=EngineConfig(threads=2),
                                risk=RiskConfig(ego_path=False, rules=DecisionRules(classes=["person"])))
    network = build_network(settings, score_threshold=conf, nms_threshold=nms)
    ours = network.detect(frame)
    unmatched, box_error, score_error = list(range(len(ours.boxes))), 0.0, 0.0
    missed = 0
    for box, score, cls in zip(ref_boxes, ref_scores, ref_classes):
        candidates = [i for i in unmatched if ours.class_ids[i] == cls and iou(box, ours.boxes[i]) > 0.95]
        if not candidates:
            missed += 1
            continue
        best = max(candidates, key=lambda i: iou(box, ours.boxes[i]))
        unmatched.remove(best)
        box_error = max(box_error, float(np.abs(ours.boxes[best] - box).max()))
        score_error = max(score_error, abs(float(ours.scores[best]) - float(score)))
    return {"model": onnx_path.name, "layout": network.manifest.output_layout, "classes": network.manifest.num_classes,
            "ultralytics_detections": len(ref_boxes), "our_detections": len(ours.boxes),
            "matched": len(ref_boxes) - missed, "missed": missed, "extra": len(unmatched),
            "max_box_difference_px": round(box_error, 4), "max_score_difference": round(score_error, 6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="pretrained Ultralytics weights (.pt); default: random, see above")
    parser.add_argument("--architectures", nargs="+", default=["yolov8n.yaml", "yolo11n.yaml"])
    parser.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "udacity_test1.jpg")
    parser.add_argument("--conf", type=float, default=0.99)
    parser.add_argument("--nms", type=float, default=0.45)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    frame = square_frame(args.image)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for architecture in ([args.weights.name] if args.weights else args.architectures):
            onnx_path = export(architecture, args.weights, Path(folder), frame)
            results.append({"architecture": architecture, **compare(onnx_path, frame, args.conf, args.nms)})
            print(json.dumps(results[-1]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["missed"] == 0 and r["extra"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
