"""ONNX Runtime: the default engine, on any CPU, and on NVIDIA GPUs through its CUDA provider (onnxruntime-gpu)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from perception.engines.base import Engine, EngineConfig, EngineUnavailable, Session
from perception.engines.tensorrt.provider import TENSORRT_PROVIDER

log = logging.getLogger(__name__)

# Preferred order when no providers are configured; each is used only if this onnxruntime build has it.
# Not TensorRT: unconfigured, its provider would rebuild every engine at every start with no cache
# and may fall back to the CPU silently. `engine.kind: tensorrt` (perception/engines/tensorrt) configures it.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeSession(Session):
    def __init__(self, path: Path, options: ort.SessionOptions, providers: list[str]) -> None:
        if not path.is_file():
            raise EngineUnavailable(f"model file {path} does not exist")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
            raise EngineUnavailable(f"model file {path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.input_shapes = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.providers = self._session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))


def session_options(config: EngineConfig, dimensions: Mapping[str, int] | None = None) -> ort.SessionOptions:
    """ONNX Runtime session options for `config`; `dimensions` pins the graph's named dimensions."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Sequential execution and one thread pool: predictable latency beats peak throughput here.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if config.threads:
        options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spin else "0")
    for name, value in (dimensions or {}).items():
        options.add_free_dimension_override_by_name(name, value)
    return options


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        available = ort.get_available_providers()
        if config.providers:
            missing = [p for p in config.providers if p not in available]
            if missing:
                raise EngineUnavailable(f"onnxruntime providers {missing} are not in this build (have {available})")
            self.providers = list(config.providers)
        else:
            self.providers = [p for p in PREFERRED_PROVIDERS if p in available]
        if TENSORRT_PROVIDER in self.providers:  # listed by hand: it builds per shape just the same
            self.any_input_size = False

    @classmethod
    def unavailable_reason(cls, config: EngineConfig) -> str | None:
        return None  # onnxruntime is a runtime dependency; provider problems are reported on open

    def open(self, onnx_path: Path, part_name: str, dimensions: Mapping[str, int] | None = None) -> Session:
        session = OnnxRuntimeSession(Path(onnx_path), session_options(self.config, dimensions), self.providers)
        # The CUDA provider searches cuDNN's convolution algorithms at each new shape (its default
        # cudnn_conv_algo_search is EXHAUSTIVE): assumed like PyTorch on CUDA, not measured (no
        # onnxruntime-gpu could be run on a GPU here). Where the session got it, not where it was asked for.
        if "CUDAExecutionProvider" in session.providers:
            self.compiles_per_input_size = True
        log.debug("%s: %s on %s", part_name, onnx_path.name, session.providers)
        return session

    def describe(self) -> str:
        return f"onnxruntime {ort.__version__} ({', '.join(self.providers)})"
