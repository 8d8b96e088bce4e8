"""The manifest of a detector split into stages with early exits.

A stage is a piece of the trunk: it takes named tensors (the image, or features from earlier
stages) and produces named feature tensors. An exit is a head attached after a stage: it takes
named tensors available by then and produces detections in the YOLOX raw layout
[1, N, 5 + num_classes] (dx, dy, log w, log h, objectness, class scores; objectness and classes
already sigmoided), anchor points ordered by `strides`, row-major per level, or in Ultralytics'
(`output_layout`). Every exit of a manifest produces the same N, so decoding is the same whatever
the depth. A plain ONNX detector gets its one-stage manifest inferred (perception.detection.onnx_model).

Running to exit k means running stages 0..after_stage(k) once each, and only the heads of the
exits actually evaluated: deeper work continues from the kept features, never recomputes them.
An exit whose `file` is null passes through a stage output that already is the exit output.

An exit may also name a `direct_file`: one graph from the image to that exit's output (its stages
and head merged, the same operators), for a frame known before it starts to run to that exit. One
engine call instead of one per part: the split costs copies and optimisations across the parts'
boundaries (docs/BENCHMARKS.md, "One graph for a frame that runs to full depth").
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from perception.config import ConfigError, Range, from_mapping, load_yaml
from perception.detection.classes import WEIGHTS_DIR, read_class_names
from perception.detection.onnx_model import looks_like_onnx, manifest_data
from perception.messages import STAGE_NAME_CHARS, Detections, FrameHeader, check_name


# The staged graphs' free dimensions are named, so that an engine can pin them (Manifest.dimensions)
# and `perception export` writes them the same way.
ANCHORS = "anchors"  # the anchor points of an exit's output [1, anchors, 5 + classes]
PART_STAMP_PREFIX = "det."  # a part's time travels in the detections message as the stamp det.<part>
# The detector's other steps (perception.detection.outputs) and the latency report's groups (perception.report):
# a part named as one would be timed, or reported, as that step.
DETECTOR_STAMPS = ("recv", "warm", "flow", "preprocess", "post", "capture", "publish", "transport", "postprocess", "decision")


def spatial_dimension_names(stride: int) -> tuple[str, str]:
    """The names of the height and width of a tensor at `stride` from the image (1: the image itself)."""
    suffix = "" if stride == 1 else f"_{stride}"
    return f"height{suffix}", f"width{suffix}"


@dataclass(frozen=True)
class InputSpec:
    name: str
    width: int  # graphs of a fixed size (and engines built for one): a frame is scaled to fit width x height
    height: int
    pad_value: float = 114.0
    channels: Literal["bgr", "rgb"] = "bgr"  # the order the graph takes colours in (YOLOX: BGR, Ultralytics: RGB)
    pixel_scale: Annotated[float, Range(0, 1, low_open=True)] = 1.0  # 0-255 values times this (1/255: 0-1)
    # The parts' graphs take any input size in multiples of the largest stride (their sizes are named
    # dimensions, see Manifest.dimensions): each frame then runs at the largest scale its aspect allows
    # within a budget of pixels (perception.detection.yolox.budget_input), padded only to the next
    # multiple: 512x288 for 16:9 and 480x352 for 4:3 within 416x416's 173,056 pixels.
    fit_aspect: bool = False
    pixels: int | None = None  # that budget; default width x height

    @property
    def default_pixels(self) -> int:
        return self.pixels or self.width * self.height


@dataclass(frozen=True)
class StageSpec:
    name: str
    file: Path
    inputs: list[str]
    outputs: list[str]


@dataclass(frozen=True)
class ExitSpec:
    name: str
    after_stage: int
    file: Path | None
    inputs: list[str]
    output: str
    direct_file: Path | None = None  # image -> output in one graph (the module docstring)

    @property
    def direct_name(self) -> str:
        """The direct graph's part name, for its timings and the detections' stamps (det.<part>)."""
        return f"{self.name}.direct"


@dataclass(frozen=True)
class Manifest:
    name: str
    input: InputSpec
    num_classes: int
    strides: list[int]
    stages: list[StageSpec]
    exits: list[ExitSpec]
    classes_file: Path | None = None
    classes: list[str] = field(default_factory=list)  # the names inline, instead of a classes_file
    # The exits' raw output: "yolox" as above, or "yolov8" (Ultralytics YOLOv8/YOLO11: [1, 4 + classes, N],
    # centre x, centre y, width, height in input pixels, then class scores; no objectness).
    output_layout: Literal["yolox", "yolov8"] = "yolox"
    description: str = ""
    # Filled in by training/benchmarks: per-exit facts (e.g. measured relative cost), informative only.
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.stages or not self.exits:
            raise ValueError("a manifest needs at least one stage and one exit")
        if self.classes and (self.classes_file is not None or len(self.classes) != self.num_classes):
            raise ValueError(f"classes: {len(self.classes)} names for {self.num_classes} classes, or with a classes_file too")
        available = {self.input.name}
        produced_by_stage: list[set[str]] = []
        for stage in self.stages:
            missing = [name for name in stage.inputs if name not in available]
            if missing:
                raise ValueError(f"stage {stage.name} needs {missing}, produced by no earlier stage")
            available |= set(stage.outputs)
            produced_by_stage.append(set(available))
        previous = -1
        for exit_ in self.exits:
            if not 0 <= exit_.after_stage < len(self.stages):
                raise ValueError(f"exit {exit_.name}: after_stage {exit_.after_stage} is not a stage index")
            if exit_.after_stage < previous:
                raise ValueError(f"exit {exit_.name}: exits must be ordered from shallow to deep")
            previous = exit_.after_stage
            missing = [n for n in exit_.inputs if n not in produced_by_stage[exit_.after_stage]]
            if missing:
                raise ValueError(f"exit {exit_.name} needs {missing}, not available after stage {exit_.after_stage}")
            if exit_.file is None and exit_.inputs != [exit_.output]:
                raise ValueError(f"exit {exit_.name}: without a file, inputs must be exactly [output]")
        # Each part a frame runs adds its stamp to the frame's own and the detector's recv, warm, flow and post.
        room = Detections.MAX_STAMPS_IN - FrameHeader.MAX_STAMPS_IN - 4
        heads = sum(1 for exit_ in self.exits if exit_.file)
        if len(self.stages) + heads > room:
            raise ValueError(f"{len(self.stages)} stages and {heads} exit heads: a frame's detections carry "
                             f"the stamps of at most {room} parts")
        parts = [name for name, _ in self.parts()]
        if len(set(parts)) != len(parts):  # each is timed, and planned with, under its name
            raise ValueError(f"the names of the parts that run must differ, got {parts}")
        reserved = [name for name in parts if name in DETECTOR_STAMPS]
        if reserved:
            raise ValueError(f"part names {reserved} are the detector's own steps ({', '.join(DETECTOR_STAMPS)})")
        for name in parts:  # each part's time travels as the stamp det.<part> (a direct graph's: det.<exit>.direct)
            try:
                check_name(PART_STAMP_PREFIX + name, "part's stamp", STAGE_NAME_CHARS)
            except ValueError as exc:
                raise ValueError(f"part name {name!r} cannot be timed: {exc}") from None
        largest = max(self.strides, default=1)
        if self.input.width % largest or self.input.height % largest:  # or the anchor grid would not fit the input
            raise ValueError(f"input width and height must be multiples of the largest stride {largest}, "
                             f"got {self.input.width}x{self.input.height}")

    @property
    def anchor_count(self) -> int:
        return self.dimensions(self.input.width, self.input.height)[ANCHORS]

    def dimensions(self, width: int, height: int) -> dict[str, int]:
        """The values of the parts' named dimensions (spatial_dimension_names, ANCHORS) for a width x
        height input. An engine that builds for fixed shapes (TensorRT) pins a graph's dimensions with them."""
        values = dict(zip(spatial_dimension_names(1), (height, width)))
        for stride in self.strides:
            values |= dict(zip(spatial_dimension_names(stride), (height // stride, width // stride)))
        values[ANCHORS] = sum((width // s) * (height // s) for s in self.strides)
        return values

    def class_names(self) -> list[str]:
        if self.classes:
            return list(self.classes)
        if self.classes_file is None:
            return [str(i) for i in range(self.num_classes)]
        names = read_class_names(self.classes_file)
        if len(names) != self.num_classes:
            raise ConfigError(f"{self.classes_file}: {len(names)} class names for {self.num_classes} classes")
        return names

    def parts(self, direct: bool = True) -> list[tuple[str, Path]]:
        """(name, file) of every graph that runs, by the name it is timed under: the stages, the exits
        with a file and, with `direct`, the direct graphs."""
        return [(s.name, s.file) for s in self.stages] + [(e.name, e.file) for e in self.exits if e.file is not None] + \
            ([(e.direct_name, e.direct_file) for e in self.exits if e.direct_file is not None] if direct else [])

    def files(self) -> list[Path]:
        return [file for _, file in self.parts()]


def load_manifest(path: str | Path) -> Manifest:
    """Load and check a manifest, or infer one from a plain ONNX detector (perception.detection.onnx_model);
    a manifest's relative file names resolve against its folder. Missing files are a one-line
    ConfigError naming the file."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (WEIGHTS_DIR / path).is_file():
        path = WEIGHTS_DIR / path
    if not path.is_file():
        raise ConfigError(f"{path}: model not found (a manifest, or a plain ONNX detector)")
    data = manifest_data(path) if looks_like_onnx(path) else load_yaml(path)
    manifest = from_mapping(Manifest, data, source=str(path), base_dir=path.parent)
    for file in manifest.files():
        if not file.is_file():
            raise ConfigError(f"{path}: model file {file} does not exist")
    return manifest


def write_manifest(manifest_data: dict, path: Path) -> None:
    """Write manifest JSON (used by export), only once it loads: written beside `path` first (its
    file names resolve against the same folder), loaded back, then put in place, so a manifest that
    does not load never replaces one that did. ConfigError naming the problem otherwise."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.stem}.", suffix=".json", delete=False) as file:
        staged = Path(file.name)
        file.write(json.dumps(manifest_data, indent=2) + "\n")
    try:
        load_manifest(staged)
        os.replace(staged, path)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(str(staged), str(path))) from None
    finally:
        staged.unlink(missing_ok=True)
