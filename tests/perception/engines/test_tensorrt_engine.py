"""The TensorRT engine: its pure parts (cache key and layout, precision flags, calibration input, the
reasons it is unavailable, the CLI's refusal) run everywhere; building and running engines needs
TensorRT and a CUDA GPU and is skipped, with the reason, where they are missing."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO
from perception.detection.manifest import WEIGHTS_DIR
from perception.engines import EngineConfig, EngineUnavailable, TensorRTConfig, create_engine
from perception.engines import tensorrt_engine as trt_engine
from perception.engines.tensorrt_engine import (
    CudaError,
    CudaRuntime,
    GpuInfo,
    PrecisionPlan,
    TensorRTEngine,
    build_main,
    cache_key,
    calibration_batches,
    calibration_cache_path,
    engine_cache_path,
    has_fast_fp16,
    precision_plan,
    resolve_cache_dir,
    static_input_shape,
    timing_cache_path,
)

YOLOX_ONNX = WEIGHTS_DIR / "yolox_nano.onnx"
DASHCAM = REPO / "recordings" / "udacity_dashcam.mp4"
H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))

TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
CUDA_PYTHON = importlib.util.find_spec("cuda") is not None and (
    importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None)
REASON = TensorRTEngine.unavailable_reason(EngineConfig(kind="tensorrt"))
SKIP_REASON = (f"{REASON} (NVIDIA's package index is unreachable here)" if REASON == "tensorrt is not installed"
               else f"TensorRT cannot run here: {REASON}")
needs_tensorrt_gpu = pytest.mark.skipif(REASON is not None, reason=SKIP_REASON)
needs_no_tensorrt = pytest.mark.skipif(TRT_INSTALLED, reason="tensorrt is installed here; this checks the machine without it")


def _cudart():
    return trt_engine._import_cudart()


def _gpu_visible() -> bool:
    if not CUDA_PYTHON:
        return False
    try:
        return CudaRuntime(_cudart()).device_count() > 0
    except CudaError:
        return False


# ---------------------------------------------------------------------------- cache key and layout


def test_cache_key_is_stable_for_the_same_inputs():
    model = YOLOX_ONNX.read_bytes()
    config = TensorRTConfig()
    key = cache_key(model, H100, "10.13.0.35", config)
    assert key == cache_key(bytes(model), GpuInfo(H100.name, (9, 0)), "10.13.0.35", TensorRTConfig())
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize("change", [
    "model bytes", "gpu name", "compute capability", "tensorrt version", "precision", "workspace",
])
def test_cache_key_changes_with_everything_that_changes_the_build(change):
    model, gpu, version, config = b"onnx model bytes", H100, "10.13.0.35", TensorRTConfig(precision="fp16")
    base = cache_key(model, gpu, version, config)
    if change == "model bytes":
        model = b"onnx model bytez"
    elif change == "gpu name":
        gpu = GpuInfo("NVIDIA H200", gpu.compute_capability)
    elif change == "compute capability":
        gpu = GpuInfo(gpu.name, (8, 9))
    elif change == "tensorrt version":
        version = "10.13.2.6"
    elif change == "precision":
        config = dataclasses.replace(config, precision="fp32")
    elif change == "workspace":
        config = dataclasses.replace(config, workspace_mb=2048)
    assert cache_key(model, gpu, version, config) != base


def test_calibration_settings_key_int8_engines_only():
    int8 = TensorRTConfig(precision="int8", calibration_video=Path("/data/a.mp4"), calibration_frames=64)
    key = cache_key(b"m", H100, "10.0", int8)
    assert cache_key(b"m", H100, "10.0", dataclasses.replace(int8, calibration_frames=32)) != key
    assert cache_key(b"m", H100, "10.0", dataclasses.replace(int8, calibration_video=Path("/data/b.mp4"))) != key
    # The same file name elsewhere: a vehicle finds the engine without the calibration video.
    assert cache_key(b"m", H100, "10.0", dataclasses.replace(int8, calibration_video=Path("/else/a.mp4"))) == key
    fp16 = TensorRTConfig(precision="fp16")
    assert cache_key(b"m", H100, "10.0", dataclasses.replace(fp16, calibration_frames=8)) == cache_key(b"m", H100, "10.0", fp16)
    # Device index and cache directory do not change what is built.
    assert cache_key(b"m", H100, "10.0", dataclasses.replace(fp16, device=1, cache_dir=Path("/x"))) == cache_key(b"m", H100, "10.0", fp16)


def test_cache_path_layout(tmp_path):
    key = "ab" * 32
    path = engine_cache_path(tmp_path, Path("/models/yolox_nano_stages/stage0.onnx"), "stage0", "fp16", key)
    assert path == tmp_path / f"stage0.stage0.fp16.{key[:16]}.engine"
    assert engine_cache_path(tmp_path, YOLOX_ONNX, "full", "int8", key).name == f"yolox_nano.full.int8.{key[:16]}.engine"
    assert calibration_cache_path(path) == tmp_path / f"stage0.stage0.fp16.{key[:16]}.calib"
    timing = timing_cache_path(tmp_path, H100, "10.13.0.35")
    assert timing.parent == tmp_path and timing.name.startswith("timing.") and timing.suffix == ".cache"
    assert timing == timing_cache_path(tmp_path, H100, "10.13.0.35")
    assert timing != timing_cache_path(tmp_path, H100, "10.14.0.1")
    assert timing != timing_cache_path(tmp_path, GpuInfo(H100.name, (8, 0)), "10.13.0.35")


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_cache_dir(TensorRTConfig()) == tmp_path / ".cache" / "perception" / "tensorrt"
    assert resolve_cache_dir(TensorRTConfig(cache_dir=Path("~/engines"))) == tmp_path / "engines"
    assert resolve_cache_dir(TensorRTConfig(cache_dir=Path("/var/trt"))) == Path("/var/trt")


def test_cache_files_are_written_whole(tmp_path):
    target = tmp_path / "sub" / "x.engine"
    trt_engine._atomic_write(target, b"plan")
    trt_engine._atomic_write(target, b"plan2")
    assert target.read_bytes() == b"plan2"
    assert [p.name for p in target.parent.iterdir()] == ["x.engine"]  # no temporary left behind


# ---------------------------------------------------------------------------- precision


TRT10_FLAGS = {"FP16", "INT8", "TF32", "BF16", "FP8", "REFIT"}
TRT11_FLAGS = {"TF32", "REFIT"}


@pytest.mark.parametrize("precision, fast, flags, expected", [
    ("fp32", True, TRT10_FLAGS, PrecisionPlan((), ("TF32",), False)),
    ("fp16", True, TRT10_FLAGS, PrecisionPlan(("FP16",), (), False)),
    ("int8", True, TRT10_FLAGS, PrecisionPlan(("INT8", "FP16"), (), True)),
    ("int8", False, TRT10_FLAGS, PrecisionPlan(("INT8",), (), True)),
    ("fp32", True, {"FP16"}, PrecisionPlan((), (), False)),
])
def test_precision_maps_to_builder_flags(precision, fast, flags, expected):
    assert precision_plan(precision, fast, flags) == expected


def test_fp16_without_fast_fp16_or_without_the_flag_stays_fp32_with_a_note():
    slow = precision_plan("fp16", False, TRT10_FLAGS)
    assert slow.set_flags == () and not slow.calibrate and "no fast FP16" in slow.note
    trt11 = precision_plan("fp16", True, TRT11_FLAGS)
    assert trt11.set_flags == () and "no FP16 builder flag" in trt11.note


def test_int8_without_implicit_calibration_is_a_clear_error():
    with pytest.raises(EngineUnavailable, match=r"int8: .*no implicit INT8 calibration.*Q/DQ"):
        precision_plan("int8", True, TRT11_FLAGS)
    with pytest.raises(ValueError, match="bf16"):
        precision_plan("bf16", True, TRT10_FLAGS)


@pytest.mark.parametrize("cc, fast", [((9, 0), True), ((8, 7), True), ((7, 2), True), ((6, 2), True), ((6, 1), False),
                                      ((6, 0), True), ((5, 3), True), ((5, 2), False)])
def test_fast_fp16_by_compute_capability(cc, fast):
    assert has_fast_fp16(cc) is fast


def test_a_dynamic_batch_is_built_for_one_frame_other_dynamic_sizes_are_refused():
    assert static_input_shape("images", (-1, 3, 416, 416)) == (1, 3, 416, 416)
    assert static_input_shape("images", (1, 3, 416, 416)) == (1, 3, 416, 416)
    with pytest.raises(EngineUnavailable, match=r"input images has dynamic dimensions \[1, 3, -1, -1\]"):
        static_input_shape("images", (1, 3, -1, -1))


# ---------------------------------------------------------------------------- availability


def test_the_module_imports_without_importing_tensorrt_or_cuda():
    code = ("import sys, perception.engines.tensorrt_engine;"
            "print(sorted(m for m in sys.modules if m == 'tensorrt' or m.startswith('cuda')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@needs_no_tensorrt
def test_unavailable_reason_says_tensorrt_is_not_installed():
    assert TensorRTEngine.unavailable_reason(EngineConfig(kind="tensorrt")) == "tensorrt is not installed"


@needs_no_tensorrt
def test_requesting_tensorrt_explicitly_raises_with_the_reason():
    with pytest.raises(EngineUnavailable, match="tensorrt unavailable: tensorrt is not installed"):
        create_engine(EngineConfig(kind="tensorrt"))
    with pytest.raises(EngineUnavailable, match="tensorrt is not installed"):
        TensorRTEngine(EngineConfig(kind="tensorrt"))


@needs_no_tensorrt
def test_auto_falls_back_to_onnxruntime_and_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="perception.engines.base"):
        engine = create_engine(EngineConfig(kind="auto", threads=1))
    assert engine.name == "onnxruntime"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tensorrt unavailable: tensorrt is not installed" in m and "using onnxruntime" in m for m in warnings), warnings


def test_without_cuda_python_the_reason_says_so(monkeypatch):
    monkeypatch.setattr(trt_engine, "_import_tensorrt", lambda: object())  # get past the tensorrt check

    def no_cuda():
        raise ImportError("No module named 'cuda'")

    monkeypatch.setattr(trt_engine, "_import_cudart", no_cuda)
    assert "cuda-python is not installed" in TensorRTEngine.unavailable_reason(EngineConfig(kind="tensorrt"))


@pytest.mark.skipif(not CUDA_PYTHON, reason="cuda-python is not installed")
@pytest.mark.skipif(_gpu_visible(), reason="a CUDA GPU is visible here; this checks the machine without one")
def test_without_a_gpu_the_reason_comes_from_the_real_cuda_runtime(monkeypatch):
    monkeypatch.setattr(trt_engine, "_import_tensorrt", lambda: object())  # get past the tensorrt check
    reason = TensorRTEngine.unavailable_reason(EngineConfig(kind="tensorrt"))
    assert reason.startswith("no CUDA GPU visible") and "\n" not in reason
    assert "cudaGetDeviceCount failed: cudaError" in reason  # CUDA's own error name, e.g. InsufficientDriver


@pytest.mark.skipif(not CUDA_PYTHON, reason="cuda-python is not installed")
def test_cuda_errors_name_the_call_and_cudas_error():
    cuda = CudaRuntime(_cudart())
    error = cuda.rt.cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(CudaError, match=r"^cudaMalloc\(64\) failed: cudaErrorMemoryAllocation \(out of memory\)$"):
        cuda.check((error, None), "cudaMalloc(64)")
    ok = cuda.rt.cudaError_t.cudaSuccess
    assert cuda.check((ok, 42), "x") == 42
    assert cuda.check((ok,), "x") is None
    assert cuda.check((ok, 1, 2), "x") == (1, 2)


@pytest.mark.skipif(not CUDA_PYTHON, reason="cuda-python is not installed")
def test_a_device_out_of_range_is_named():
    class OneGpu(CudaRuntime):
        def device_count(self) -> int:
            return 1

    assert trt_engine._gpu_reason(OneGpu(_cudart()), 1) == "CUDA device 1 is out of range (1 visible)"
    assert trt_engine._gpu_reason(OneGpu(_cudart()), 0) is None


# ---------------------------------------------------------------------------- INT8 calibration input


def test_calibration_batches_are_letterboxed_float32_frames(tiny_video):
    batches = list(calibration_batches(tiny_video, 5, 96, 64))
    assert len(batches) == 5
    for batch in batches:
        assert batch.shape == (1, 3, 64, 96) and batch.dtype == np.float32
        assert 0 <= batch.min() and batch.max() <= 255
    # 160x120 into 96x64: scaled to 85x64, the right strip is padding.
    assert np.all(batches[0][..., 85:] == 114.0)
    assert not np.array_equal(batches[0], batches[4])  # successive frames, not one frame repeated


def test_a_short_video_gives_what_it_has_with_a_warning(tiny_video, caplog):
    with caplog.at_level(logging.WARNING, logger="perception.engines.tensorrt_engine"):
        batches = list(calibration_batches(tiny_video, 50, 32, 32))
    assert len(batches) == 20
    assert any("only 20 of the 50 frames" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not DASHCAM.is_file(), reason=f"{DASHCAM} is not in this checkout")
def test_calibration_batches_from_the_dashcam_recording():
    batches = list(calibration_batches(DASHCAM, 3, 416, 416))
    assert [b.shape for b in batches] == [(1, 3, 416, 416)] * 3
    assert all(b.dtype == np.float32 and b.std() > 1 for b in batches)


def test_a_missing_or_unset_calibration_video_is_a_clear_error(tmp_path):
    with pytest.raises(EngineUnavailable, match=r"int8 calibration: video .*gone\.mp4: file not found"):
        calibration_batches(tmp_path / "gone.mp4", 8, 416, 416)
    with pytest.raises(EngineUnavailable, match="int8 needs a calibration video"):
        calibration_batches(None, 8, 416, 416)


# ---------------------------------------------------------------------------- CLI


@needs_no_tensorrt
def test_build_engine_without_tensorrt_prints_the_reason_and_fails(capsys):
    assert build_main([str(WEIGHTS_DIR / "yolox_nano.json"), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "build-engine: tensorrt unavailable: tensorrt is not installed"


@needs_no_tensorrt
def test_build_engine_is_wired_into_the_perception_cli():
    result = subprocess.run([sys.executable, "-m", "perception.cli", "build-engine", "yolox_nano.json"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "tensorrt unavailable: tensorrt is not installed" in result.stderr


def test_build_engine_names_a_bad_manifest_or_argument(tmp_path, capsys):
    assert build_main([str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert build_main([str(WEIGHTS_DIR / "yolox_nano.json"), "--workspace-mb", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


# ---------------------------------------------------------------------------- on a GPU with TensorRT


def _dashcam_input() -> np.ndarray:
    return next(iter(calibration_batches(DASHCAM, 1, 416, 416)))


def _onnxruntime_output(images: np.ndarray) -> np.ndarray:
    session = create_engine(EngineConfig(kind="onnxruntime", providers=["CPUExecutionProvider"])).open(YOLOX_ONNX, "full")
    return session.run({"images": images})["output"]


def _trt_engine(tmp_path: Path, precision: str, **kwargs) -> TensorRTEngine:
    return TensorRTEngine(EngineConfig(kind="tensorrt", tensorrt=TensorRTConfig(
        precision=precision, cache_dir=tmp_path / "cache", workspace_mb=512, **kwargs)))


@needs_tensorrt_gpu
@pytest.mark.timeout(600)
@pytest.mark.parametrize("precision, score_atol, box_atol", [("fp32", 1e-3, 1e-2), ("fp16", 0.03, 0.3)])
def test_tensorrt_matches_onnxruntime(tmp_path, precision, score_atol, box_atol):
    images = _dashcam_input()
    expected = _onnxruntime_output(images)
    session = _trt_engine(tmp_path, precision).open(YOLOX_ONNX, "full")
    try:
        assert session.input_names == ("images",) and session.output_names == ("output",)
        got = session.run({"images": images})["output"]
    finally:
        session.close()
    assert got.shape == expected.shape == (1, 3549, 85) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 4:], expected[..., 4:], atol=score_atol)  # objectness, classes: 0..1
    np.testing.assert_allclose(got[..., :4], expected[..., :4], atol=box_atol, rtol=0.02)  # box regressions


@needs_tensorrt_gpu
@pytest.mark.timeout(600)
def test_results_are_copies_and_close_frees(tmp_path):
    session = _trt_engine(tmp_path, "fp16").open(YOLOX_ONNX, "full")
    first = session.run({"images": _dashcam_input()})["output"]
    kept = first.copy()
    session.run({"images": np.full((1, 3, 416, 416), 114, np.float32)})
    np.testing.assert_array_equal(first, kept)
    with pytest.raises(ValueError, match=r"input images has shape \(1, 3, 320, 320\)"):
        session.run({"images": np.zeros((1, 3, 320, 320), np.float32)})
    session.close()
    session.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        session.run({"images": kept})


@needs_tensorrt_gpu
@pytest.mark.timeout(600)
def test_a_second_build_hits_the_cache_and_a_corrupt_cache_is_rebuilt(tmp_path, caplog):
    first = _trt_engine(tmp_path, "fp16").prepare(YOLOX_ONNX, "full")
    assert first.built and first.path.is_file() and first.path.parent == tmp_path / "cache"
    assert list((tmp_path / "cache").glob("timing.*.cache")), "the timing cache is saved after a build"
    again = _trt_engine(tmp_path, "fp16").prepare(YOLOX_ONNX, "full")
    assert not again.built and again.path == first.path
    first.path.write_bytes(b"not an engine")
    with caplog.at_level(logging.WARNING, logger="perception.engines.tensorrt_engine"):
        rebuilt = _trt_engine(tmp_path, "fp16").prepare(YOLOX_ONNX, "full")
    assert rebuilt.built and rebuilt.path == first.path
    assert any("cannot be deserialized" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


@needs_tensorrt_gpu
@pytest.mark.timeout(600)
def test_build_main_builds_then_reuses(tmp_path, capsys):
    args = [str(WEIGHTS_DIR / "yolox_nano.json"), "--precision", "fp16", "--cache-dir", str(tmp_path)]
    assert build_main(args) == 0
    assert "full: built " in capsys.readouterr().out
    assert build_main(args) == 0
    assert "full: reused " in capsys.readouterr().out


@needs_tensorrt_gpu
def test_an_unparsable_onnx_file_is_named(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a model")
    with pytest.raises(EngineUnavailable, match=r"bad\.onnx: TensorRT cannot parse it \(\d+ errors: "):
        _trt_engine(tmp_path, "fp32").open(bad, "x")
    with pytest.raises(EngineUnavailable, match="gone.onnx does not exist"):
        _trt_engine(tmp_path, "fp32").open(tmp_path / "gone.onnx", "x")


def _implicit_int8() -> bool:
    try:
        import tensorrt as trt
    except ImportError:
        return False
    return "INT8" in getattr(trt.BuilderFlag, "__members__", {}) and hasattr(trt, "IInt8EntropyCalibrator2")


@needs_tensorrt_gpu
@pytest.mark.skipif(REASON is None and not _implicit_int8(),
                    reason="this TensorRT has no implicit INT8 calibration (removed in 11.x)")
@pytest.mark.timeout(600)
def test_int8_calibrates_on_real_frames(tmp_path):
    engine = _trt_engine(tmp_path, "int8", calibration_video=DASHCAM, calibration_frames=16)
    prepared = engine.prepare(YOLOX_ONNX, "full")
    assert prepared.built and calibration_cache_path(prepared.path).is_file()
    session = engine.open(YOLOX_ONNX, "full")  # reuses the engine
    images = _dashcam_input()
    got = session.run({"images": images})["output"]
    session.close()
    expected = _onnxruntime_output(images)
    # INT8 is lossy: the scores must still track ONNX Runtime's.
    assert np.corrcoef(got[0, :, 4], expected[0, :, 4])[0, 1] > 0.9
