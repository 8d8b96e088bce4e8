"""TensorRTConfig as ONNX Runtime TensorrtExecutionProvider options (a pure function, no GPU needed).

Option names: https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html
"""

from __future__ import annotations

from pathlib import Path

from perception.engines.base import TensorRTConfig

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# The provider reads the table from its engine cache folder, under this name. ".flatbuffers" is the
# format onnxruntime.quantization writes; "native" would be TensorRT's own calibrator cache.
CALIBRATION_TABLE = "calibration.flatbuffers"


def _flag(value: bool) -> str:
    return "True" if value else "False"


def provider_options(config: TensorRTConfig, engine_dir: Path, timing_dir: Path) -> dict[str, str]:
    """Options for one model part: its engines in `engine_dir` (see cache.engine_cache_dir), the timing
    cache shared by every model in `timing_dir` (tactic timings depend on the GPU, not the model)."""
    if config.precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown TensorRT precision {config.precision!r} (fp32, fp16 or int8)")
    int8 = config.precision == "int8"
    options = {
        "device_id": str(config.device),
        "trt_max_workspace_size": str(config.workspace_mb << 20),
        # int8 keeps FP16 on for layers without an INT8 kernel; the provider drops FP16 where it is slow.
        "trt_fp16_enable": _flag(config.precision in ("fp16", "int8")),
        "trt_int8_enable": _flag(int8),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engine_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(timing_dir),
    }
    if int8:
        options["trt_int8_calibration_table_name"] = CALIBRATION_TABLE
        options["trt_int8_use_native_calibration_table"] = "False"
    return options


def cuda_options(config: TensorRTConfig) -> dict[str, str]:
    """The CUDA provider runs whatever TensorRT does not take, on the same GPU."""
    return {"device_id": str(config.device)}
