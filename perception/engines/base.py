"""The engine interface and engine selection.

An Engine opens one model part (a stage or an exit head of a manifest, given as its ONNX file
and its manifest name) into a Session that maps named numpy arrays to named numpy arrays.
Engines are imported lazily: the runtime imports neither torch nor tensorrt unless asked.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Mapping

import numpy as np

from perception.config import Range, check_ranges

log = logging.getLogger(__name__)


class EngineUnavailable(RuntimeError):
    """The requested engine cannot run here; the message says why, in one line."""


@dataclass(frozen=True)
class TensorRTConfig:
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    workspace_mb: Annotated[int, Range(1, 1 << 20)] = 1024
    cache_dir: Path | None = None  # serialized engines and the timing cache; default ~/.cache/perception/tensorrt
    calibration_video: Path | None = None  # int8: real frames to calibrate on
    calibration_frames: Annotated[int, Range(1, 100_000)] = 64
    device: Annotated[int, Range(0, 63)] = 0

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class EngineConfig:
    kind: Literal["auto", "onnxruntime", "tensorrt", "torch"] = "onnxruntime"
    threads: Annotated[int, Range(0, 256)] = 0  # CPU threads for ONNX Runtime / torch; 0: the library's default
    # ONNX Runtime's worker threads spin-wait between operators by default. That buys a little on an
    # idle machine and costs a lot when other nodes share the cores (measured in docs/BENCHMARKS.md).
    spin: bool = False
    providers: list[str] | None = None  # ONNX Runtime execution providers; None: best available
    torch_device: str = "cpu"
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)

    def __post_init__(self) -> None:
        check_ranges(self)


class Session(ABC):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # Per input, its shape as the graph declares it: an int per fixed dimension, a name (or None) per
    # free one. Empty when the engine does not read graphs (torch runs whatever it is fed).
    input_shapes: dict[str, tuple[int | str | None, ...]] = {}

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on float32 arrays keyed by input name; returns every output by name."""

    def close(self) -> None:
        pass


class Engine(ABC):
    name: ClassVar[str]
    # Whether one session runs inputs of any size its graph allows. TensorRT builds an engine for one
    # shape (and would rebuild it for every new one), so a detector feeds it the manifest's full input size.
    any_input_size: bool = True
    # Whether the first run at a new input size costs many later ones: CUDA kernels are chosen and
    # loaded then (90-120 ms against 11 on an H200 with PyTorch, docs/BENCHMARKS.md "GPU"). A detector
    # then warms every size a frame size can run at when it first sees that frame size
    # (StagedNetwork.warm), not on the first smaller frame of a deadline, when it is already late.
    # On a CPU the first run costs 1-2 ms more: not worth a late first frame.
    compiles_per_input_size: bool = False

    @classmethod
    @abstractmethod
    def unavailable_reason(cls, config: EngineConfig) -> str | None:
        """None when this engine can run here, else a one-line reason."""

    @abstractmethod
    def open(self, onnx_path: Path, part_name: str, dimensions: Mapping[str, int] | None = None) -> Session:
        """Open one model part: its ONNX file and its name in the manifest (e.g. 'stage0', 'exit1').
        `dimensions` pins the graph's named dimensions to these values (Manifest.dimensions); without
        them, named dimensions stay free and follow what each run is fed."""

    @property
    def runs_direct_graphs(self) -> bool:
        """Whether a manifest's direct graphs (its parts merged into one, manifest.py) compute here what
        its parts compute, so that a frame may run either: a detector opens them only then."""
        return True

    def describe(self) -> str:
        return self.name


_ENGINES = {
    "onnxruntime": "perception.engines.onnxruntime_engine:OnnxRuntimeEngine",
    "tensorrt": "perception.engines.tensorrt.runtime:TensorRTEngine",
    "torch": "perception.engines.torch_engine:TorchEngine",
}


def engine_class(kind: str) -> type[Engine]:
    module_name, _, class_name = _ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_engine(config: EngineConfig) -> Engine:
    """The configured engine; `auto` tries TensorRT, then ONNX Runtime, logging each fallback.
    An explicitly requested engine that cannot run is an EngineUnavailable error, never a silent swap."""
    kinds = ["tensorrt", "onnxruntime"] if config.kind == "auto" else [config.kind]
    reasons = []
    for kind in kinds:
        try:
            cls = engine_class(kind)
            reason = cls.unavailable_reason(config)
        except ImportError as exc:  # the engine module itself needs a missing package
            reason = f"cannot import its module ({exc})"
        if reason is None:
            if reasons:
                log.warning("engine auto: %s; using %s", "; ".join(reasons), kind)
            return cls(config)  # type: ignore[call-arg]
        reasons.append(f"{kind} unavailable: {reason}")
    raise EngineUnavailable("; ".join(reasons))
