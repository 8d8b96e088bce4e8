"""Where a model part's TensorRT engines live: one folder per ONNX content and build setting.

ONNX Runtime names the engines inside the folder (by graph, versions, precision and GPU); the folder's
key adds what those names miss, the weights above all. Pure functions, testable without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from perception.engines.base import TensorRTConfig

DEFAULT_CACHE_DIR = Path("~/.cache/perception/tensorrt")
# Bump when what goes into a folder changes in a way the key's other fields do not capture.
CACHE_FORMAT = 2
KEY_CHARS = 16  # of the sha256 hex digest, in folder names: collisions are not a practical concern


def resolve_cache_dir(config: TensorRTConfig) -> Path:
    return Path(config.cache_dir or DEFAULT_CACHE_DIR).expanduser()


def cache_key(model_bytes: bytes, config: TensorRTConfig, dimensions: Mapping[str, int] | None = None) -> str:
    """sha256 hex digest over the ONNX bytes, the build settings of `config` and the values the graph's
    named dimensions are pinned to (an engine is built for one shape). The device index and the cache
    folder are not in it: they change where an engine runs or lies, not what it is."""
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "precision": config.precision,
        "workspace_mb": config.workspace_mb,
    }
    if dimensions:
        fields["dimensions"] = dict(sorted(dimensions.items()))
    if config.precision == "int8":
        # By file name, not content: a vehicle must find its engine without the calibration video.
        video = config.calibration_video
        fields["calibration"] = {"video": Path(video).name if video else None, "frames": config.calibration_frames}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def engine_cache_dir(cache_dir: Path, onnx_path: Path, precision: str, key: str) -> Path:
    """<cache_dir>/<onnx stem>.<precision>.<key prefix>: readable, and unique per model content and build."""
    return Path(cache_dir) / f"{Path(onnx_path).stem}.{precision}.{key[:KEY_CHARS]}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename: several processes may prepare the same part; none may read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
