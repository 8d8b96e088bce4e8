"""A plain one-graph ONNX detector used where a manifest is: its manifest inferred from the graph.

The graph must take one image [1, 3, H, W] and give one output in a layout this project decodes:
YOLOX's [1, N, 5 + classes] (BGR 0-255 input) or Ultralytics YOLOv8/YOLO11's [1, 4 + classes, N]
(RGB 0-1 input), N the anchor points of strides 8, 16 and 32. The input size is the graph's own
when fixed; a graph with free height and width runs each frame at its aspect within the default
pixel budget. Class names come from the graph's metadata (Ultralytics writes `names`), else from a
Darknet-style `<model>.names` file beside it, else COCO's when there are 80, else numbers.
Anything else (several outputs, a segmentation head, other preprocessing) needs a written manifest.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from perception.config import ConfigError
from perception.detection.classes import COCO_CLASSES, read_class_names

STRIDES = [8, 16, 32]
FREE_SIZE = 416  # a graph with free height and width: its default pixel budget, 416 x 416
ONNX_SUFFIX = ".onnx"
SNIFF_BYTES = 4096
# Ultralytics' names for the COCO classes where the bundled list (and the default rules) say otherwise.
COCO_SYNONYMS = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
                 "dining table": "diningtable", "tv": "tvmonitor"}


def looks_like_onnx(path: Path) -> bool:
    """An .onnx file name, or content that is not text (an ONNX protobuf under another name)."""
    if path.suffix.lower() == ONNX_SUFFIX:
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(SNIFF_BYTES)
    except OSError:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # not text, unless only a character cut at the sniffed edge
        return not (len(head) == SNIFF_BYTES and exc.reason == "unexpected end of data")
    return b"\x00" in head


def anchor_count(width: int, height: int) -> int:
    return sum((width // s) * (height // s) for s in STRIDES)


def manifest_data(path: Path) -> dict:
    """The manifest (as a manifest file would hold it) of the plain ONNX detector at `path`;
    ConfigError (one line naming the file) when it is not one this project can run without a manifest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # inspected, not run for speed
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; one line whatever they are
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: neither a manifest nor an ONNX model onnxruntime can load ({first[:200]})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
        shapes = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise ConfigError(f"{path}: a plain ONNX detector takes one image [1, 3, H, W], this graph takes {shapes}; "
                          "write a manifest for it")
    if len(outputs) != 1:
        raise ConfigError(f"{path}: a plain ONNX detector has one output, this graph has {len(outputs)} "
                          f"({', '.join(o.name for o in outputs)}); write a manifest for it")
    if inputs[0].type != "tensor(float)":
        raise ConfigError(f"{path}: its input {inputs[0].name} is {inputs[0].type}; a plain ONNX detector takes float32 "
                          "(export it in fp32; TensorRT can still build it in fp16)")
    metadata = session.get_modelmeta().custom_metadata_map
    if metadata.get("task", "detect") != "detect":
        raise ConfigError(f"{path}: an Ultralytics {metadata['task']} model; only detection models (task detect) run here")
    height, width = inputs[0].shape[2:]
    fixed = isinstance(width, int) and isinstance(height, int)
    if not fixed and (isinstance(width, int) or isinstance(height, int)):
        raise ConfigError(f"{path}: its input {inputs[0].shape} fixes one side and frees the other; export it with "
                          "both fixed or both free")
    if not fixed:
        width = height = FREE_SIZE
    elif width % STRIDES[-1] or height % STRIDES[-1]:
        raise ConfigError(f"{path}: input {width}x{height} is not a multiple of stride {STRIDES[-1]}")
    layout, classes = _output_layout(path, session, inputs[0].name, outputs[0], width, height)
    names = _class_names(path, metadata, classes)
    yolov8 = layout == "yolov8"
    return {
        "name": path.stem, "description": f"{path.name}, a plain ONNX {layout} detector (manifest inferred from the graph)",
        "input": {"name": inputs[0].name, "width": width, "height": height, "fit_aspect": not fixed,
                  "channels": "rgb" if yolov8 else "bgr", "pixel_scale": 1 / 255 if yolov8 else 1.0},
        "num_classes": classes, "strides": list(STRIDES), "output_layout": layout, "classes": names,
        "stages": [{"name": "full", "file": str(path.resolve()), "inputs": [inputs[0].name], "outputs": [outputs[0].name]}],
        "exits": [{"name": "full", "after_stage": 0, "file": None, "inputs": [outputs[0].name], "output": outputs[0].name}],
    }


def _output_layout(path: Path, session, input_name: str, output, width: int, height: int) -> tuple[str, int]:  # noqa: ANN001
    """('yolox' | 'yolov8', class count) from the output's shape; a graph whose output shape is not
    fixed is run once on a blank input to see it."""
    shape = output.shape
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        blank = np.full((1, 3, height, width), 114, np.float32)
        try:
            shape = list(session.run([output.name], {input_name: blank})[0].shape)
        except Exception as exc:  # as above: one line
            raise ConfigError(f"{path}: running it once on a blank {width}x{height} input failed "
                              f"({'; '.join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]})") from None
    anchors = anchor_count(width, height)
    if len(shape) == 3 and shape[2] == anchors and shape[1] > 4:
        return "yolov8", shape[1] - 4
    if len(shape) == 3 and shape[1] == anchors and shape[2] > 5:
        return "yolox", shape[2] - 5
    raise ConfigError(f"{path}: output {output.name} {list(shape)} is in no layout this project decodes for a "
                      f"{width}x{height} input: YOLOX [1, {anchors}, 5 + classes] or YOLOv8 [1, 4 + classes, {anchors}]")


def _class_names(path: Path, metadata: dict[str, str], classes: int) -> list[str]:
    """Names from the graph's metadata, a `<model>.names` file, COCO's (80 classes) or numbers."""
    if "names" in metadata:
        try:
            names = ast.literal_eval(metadata["names"])  # Ultralytics: "{0: 'person', 1: 'bicycle', ...}"
        except (ValueError, SyntaxError):
            raise ConfigError(f"{path}: its metadata's class names are not a Python literal") from None
        if isinstance(names, dict):
            try:
                by_index = {int(key): value for key, value in names.items()}
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: its metadata's class names are keyed by {sorted(names)[:3]}, not class indices") from None
            if sorted(by_index) != list(range(len(by_index))):
                raise ConfigError(f"{path}: its metadata's class names are not indexed 0 to {len(by_index) - 1}")
            names = [by_index[i] for i in range(len(by_index))]
        source = "its metadata"
    elif path.with_suffix(".names").is_file():
        names, source = read_class_names(path.with_suffix(".names")), str(path.with_suffix(".names"))
    elif classes == 80:
        names, source = read_class_names(COCO_CLASSES), "COCO"
    else:
        return [str(i) for i in range(classes)]
    if len(names) != classes:
        raise ConfigError(f"{path}: {len(names)} class names in {source} for the {classes} classes of its output")
    names = [str(n) for n in names]
    coco = read_class_names(COCO_CLASSES)
    if [COCO_SYNONYMS.get(n, n) for n in names] == coco:
        return coco  # COCO under Ultralytics' names: the bundled names, which the default rules use
    return names
