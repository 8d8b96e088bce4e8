"""The `tensorrt` engine: each model part in an ONNX Runtime session on the TensorRT provider, its
engines cached per model content, INT8 calibrated on real frames first. See the package docstring for
what ONNX Runtime does and what is ours. Written to the provider's documented options; not yet run on a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from perception.engines.base import Engine, EngineConfig, EngineUnavailable, Session
from perception.engines.onnxruntime_engine import OnnxRuntimeSession, session_options
from perception.engines.tensorrt.cache import cache_key, engine_cache_dir, resolve_cache_dir
from perception.engines.tensorrt.calibration import write_calibration_table
from perception.engines.tensorrt.provider import (
    CALIBRATION_TABLE,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    cuda_options,
    provider_options,
)

log = logging.getLogger(__name__)


class TensorRTSession(Session):
    def __init__(self, path: Path, options: ort.SessionOptions, providers: list[tuple[str, dict[str, str]]],
                 part_name: str) -> None:
        try:
            # enable_fallback=0: on a provider error ONNX Runtime would otherwise retry on CUDA/CPU, silently.
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers, enable_fallback=0)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineUnavailable(f"{part_name}: onnxruntime cannot open {path} on TensorRT "
                                    f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        self.providers = self._session.get_providers()
        if TENSORRT_PROVIDER not in self.providers:
            # A provider whose libraries do not load (no libnvinfer, no GPU) is dropped with only a log warning.
            raise EngineUnavailable(f"{part_name}: onnxruntime did not start its TensorRT provider for {path} "
                                    f"(running on {self.providers}; TensorRT libraries or GPU missing?)")
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.input_shapes = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))


class TensorRTEngine(Engine):
    name = "tensorrt"
    any_input_size = False  # an engine is built for one shape: the detector pins the manifest's full input size

    def __init__(self, config: EngineConfig) -> None:
        reason = self.unavailable_reason(config)
        if reason is not None:
            raise EngineUnavailable(f"tensorrt unavailable: {reason}")
        self.config = config
        self.settings = config.tensorrt
        self.cache_dir = resolve_cache_dir(config.tensorrt)
        # The same session options as the onnxruntime engine (threads, no spinning, sequential).
        self.ort_config = dataclasses.replace(config, kind="onnxruntime", providers=None)
        self.cuda_fallback = CUDA_PROVIDER in ort.get_available_providers()

    @classmethod
    def unavailable_reason(cls, config: EngineConfig) -> str | None:
        if TENSORRT_PROVIDER in ort.get_available_providers():
            return None  # whether TensorRT's libraries and a GPU are there shows when a part is opened
        return (f"onnxruntime {ort.__version__} has no {TENSORRT_PROVIDER} (it needs onnxruntime-gpu and "
                "TensorRT 10, whose wheels come only from NVIDIA's index)")

    @property
    def runs_direct_graphs(self) -> bool:
        """Not in int8: a graph that takes the image is calibrated and built in int8 whole, the parts
        after stage 0 in fp16, so a direct graph would measure otherwise than the parts it merges."""
        return self.settings.precision != "int8"

    def prepare(self, onnx_path: Path, part_name: str, dimensions: Mapping[str, int] | None = None,
                ) -> tuple[Path, list[tuple[str, dict[str, str]]]]:
        """A part's engine folder (created) and its provider list; for int8, the calibration table in it.
        `dimensions`: what the graph's named dimensions are pinned to (part of the engine's identity)."""
        if not onnx_path.is_file():
            raise EngineUnavailable(f"model file {onnx_path} does not exist")
        if dimensions:  # only what this graph's inputs name (the rest follows from them): a fixed-size graph's
            # engine is the same with or without
            graph = OnnxRuntimeSession(onnx_path, session_options(self.ort_config), ["CPUExecutionProvider"])
            named = {d for shape in graph.input_shapes.values() for d in shape if isinstance(d, str)}
            dimensions = {name: value for name, value in dimensions.items() if name in named}
        key = cache_key(onnx_path.read_bytes(), self.settings, dimensions)
        engine_dir = engine_cache_dir(self.cache_dir, onnx_path, self.settings.precision, key)
        engine_dir.mkdir(parents=True, exist_ok=True)  # the provider creates one folder level, not its parents
        if self.settings.precision == "int8" and not (engine_dir / CALIBRATION_TABLE).is_file():
            write_calibration_table(onnx_path, part_name, engine_dir / CALIBRATION_TABLE,
                                    self.settings.calibration_video, self.settings.calibration_frames, dimensions)
        providers: list[tuple[str, dict[str, str]]] = [
            (TENSORRT_PROVIDER, provider_options(self.settings, engine_dir, self.cache_dir))]
        if self.cuda_fallback:
            providers.append((CUDA_PROVIDER, cuda_options(self.settings)))
        return engine_dir, providers

    def open(self, onnx_path: Path, part_name: str, dimensions: Mapping[str, int] | None = None) -> Session:
        engine_dir, providers = self.prepare(Path(onnx_path), part_name, dimensions)
        session = TensorRTSession(Path(onnx_path), session_options(self.ort_config, dimensions), providers, part_name)
        log.debug("%s: %s on %s, engines in %s", part_name, Path(onnx_path).name, session.providers, engine_dir)
        return session

    def describe(self) -> str:
        return (f"tensorrt via onnxruntime {ort.__version__} {TENSORRT_PROVIDER} "
                f"({self.settings.precision}, device {self.settings.device})")
