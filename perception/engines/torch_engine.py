"""PyTorch: the reference engine, running the rebuilt YOLOX-nano's parts by manifest name.

It ignores the ONNX graph of a part and runs the matching PyTorch submodule instead, with weights
from yolox_nano.onnx (trunk and original head) and yolox_nano_exits.npz (the distilled exit heads),
both looked up next to the part's file first, then in perception/weights. Useful to check the
exported ONNX files and to run on a GPU without TensorRT. torch is imported only when this engine
is used: the runtime never needs it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from perception.engines.base import Engine, EngineConfig, EngineUnavailable, Session

log = logging.getLogger(__name__)

# A one-stage manifest (yolox_nano.json) names its single part "full": the whole original network.
FULL_PART = "full"


class TorchSession(Session):
    def __init__(self, module: Any, input_names: tuple[str, ...], output_names: tuple[str, ...], device: str) -> None:
        self._module = module
        self._device = device
        self.input_names = input_names
        self.output_names = output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            inputs = [torch.from_numpy(np.ascontiguousarray(feeds[name], np.float32)).to(self._device) for name in self.input_names]
            outputs = self._module(*inputs)
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        return {name: out.detach().to("cpu").numpy() for name, out in zip(self.output_names, outputs)}


class _FullDepth:
    """The original network as one callable part (images -> output)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __call__(self, images: Any) -> Any:
        return self._model.full_depth(images)


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, config: EngineConfig) -> None:
        reason = self.unavailable_reason(config)
        if reason is not None:
            raise EngineUnavailable(f"torch engine: {reason}")
        import torch

        self.config = config
        self.device = config.torch_device
        self.compiles_per_input_size = self.device.startswith("cuda")  # measured: Engine.compiles_per_input_size
        if config.threads:
            torch.set_num_threads(config.threads)
        self._models: dict[tuple[Path, Path], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def unavailable_reason(cls, config: EngineConfig) -> str | None:
        try:
            import torch
        except ImportError as exc:
            return f"torch is not installed ({exc}); pip install 'perception[train]'"
        try:
            torch.device(config.torch_device)
        except (RuntimeError, ValueError) as exc:
            return f"bad torch_device {config.torch_device!r} ({exc})"
        if config.torch_device.startswith("cuda") and not torch.cuda.is_available():
            return f"torch_device {config.torch_device!r} requested but CUDA is not available to torch"
        return None

    def _model(self, weights_dir: Path) -> Any:
        """One model per weights folder, built once and shared by all its parts."""
        from perception.training.yolox_torch import EXITS_NPZ, ORIGINAL_ONNX, build_model

        original = _next_to(weights_dir, ORIGINAL_ONNX)
        exits = _next_to(weights_dir, EXITS_NPZ)
        key = (original, exits)
        with self._lock:
            if key not in self._models:
                if not original.is_file():
                    raise EngineUnavailable(f"torch engine: pretrained weights {original} do not exist")
                self._models[key] = build_model(original, exits if exits.is_file() else None).to(self.device)
                if not exits.is_file():
                    log.warning("torch engine: %s missing: early exits are untrained", exits)
            return self._models[key]

    def open(self, onnx_path: Path, part_name: str, dimensions: Mapping[str, int] | None = None) -> Session:
        # `dimensions` is not needed: a PyTorch module runs whatever size it is fed.
        from perception.training.yolox_torch import YOLOXNanoExits

        model = self._model(Path(onnx_path).resolve().parent)
        if part_name == FULL_PART:
            return TorchSession(_FullDepth(model), ("images",), ("output",), self.device)
        if part_name not in YOLOXNanoExits.part_names:
            raise EngineUnavailable(f"torch engine: no PyTorch part named {part_name!r} "
                                    f"(have {', '.join((*YOLOXNanoExits.part_names, FULL_PART))})")
        part = model.part(part_name)
        return TorchSession(part, tuple(part.input_names), tuple(part.output_names), self.device)

    @property
    def runs_direct_graphs(self) -> bool:
        """No: it runs the PyTorch module of a part's name, and has none for a merged graph."""
        return False

    def describe(self) -> str:
        import torch

        return f"torch {torch.__version__} ({self.device}, {torch.get_num_threads()} threads)"


def _next_to(folder: Path, default: Path) -> Path:
    """`default`'s file name in `folder` if it is there, else `default`."""
    candidate = folder / default.name
    return candidate if candidate.is_file() else default
