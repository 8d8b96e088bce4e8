"""The `tensorrt` engine (ONNX Runtime's TensorRT provider, configured from TensorRTConfig): its pure
parts (cache folders, provider options, calibration input), INT8 calibration on the CPU, the reasons it
is unavailable and the CLI's refusal run everywhere; building and running engines needs onnxruntime-gpu,
TensorRT and a CUDA GPU, and is skipped, with the reason, where they are missing."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from helpers import REPO
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.engines import EngineConfig, EngineUnavailable, TensorRTConfig, create_engine
from perception.engines.tensorrt.build import build_main
from perception.engines.tensorrt.cache import atomic_write, cache_key, engine_cache_dir, resolve_cache_dir
from perception.engines.tensorrt.calibration import (
    calibration_batches,
    image_input,
    static_input_shape,
    write_calibration_table,
)
from perception.engines.tensorrt.provider import CALIBRATION_TABLE, cuda_options, provider_options
from perception.engines.tensorrt.runtime import TensorRTEngine

YOLOX_ONNX = WEIGHTS_DIR / "yolox_nano.onnx"
STAGE0_ONNX = WEIGHTS_DIR / "yolox_nano_stage0.onnx"
STAGE1_ONNX = WEIGHTS_DIR / "yolox_nano_stage1.onnx"
DASHCAM = REPO / "recordings" / "udacity_dashcam.mp4"
# What the detector pins the staged parts' named dimensions to on TensorRT: the manifest's full input.
FULL_SIZE = load_manifest("yolox_nano_exits.json").dimensions(416, 416)

TRT_PROVIDER = "TensorrtExecutionProvider" in ort.get_available_providers()
NOT_INSTALLABLE = "TensorRT is not installable here: its wheels come only from NVIDIA's index"
needs_tensorrt_gpu = pytest.mark.skipif(not TRT_PROVIDER, reason=f"{NOT_INSTALLABLE} (this onnxruntime has no "
                                        "TensorrtExecutionProvider)")
needs_no_tensorrt = pytest.mark.skipif(TRT_PROVIDER, reason="this onnxruntime has the TensorRT provider; this checks one without it")
QUANTIZATION = importlib.util.find_spec("onnx") is not None
needs_quantization = pytest.mark.skipif(not QUANTIZATION, reason="onnxruntime.quantization needs the onnx package (.[train])")


# ---------------------------------------------------------------------------- cache folders


def test_cache_key_is_stable_for_the_same_inputs():
    model = YOLOX_ONNX.read_bytes()
    key = cache_key(model, TensorRTConfig())
    assert key == cache_key(bytes(model), TensorRTConfig())
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize("change", ["model bytes", "precision", "workspace"])
def test_cache_key_changes_with_what_onnxruntimes_names_miss(change):
    # The weights above all: ONNX Runtime's engine names hash the graph's structure, not its weights.
    model, config = b"onnx model bytes", TensorRTConfig(precision="fp16")
    base = cache_key(model, config)
    if change == "model bytes":
        model = b"onnx model bytez"
    elif change == "precision":
        config = dataclasses.replace(config, precision="fp32")
    elif change == "workspace":
        config = dataclasses.replace(config, workspace_mb=2048)
    assert cache_key(model, config) != base


def test_the_sizes_an_engine_is_built_for_are_part_of_its_key():
    assert cache_key(b"m", TensorRTConfig(), FULL_SIZE) == cache_key(b"m", TensorRTConfig(), dict(reversed(FULL_SIZE.items())))
    assert cache_key(b"m", TensorRTConfig(), FULL_SIZE) != cache_key(b"m", TensorRTConfig(), {**FULL_SIZE, "height": 256})
    assert cache_key(b"m", TensorRTConfig(), FULL_SIZE) != cache_key(b"m", TensorRTConfig())


def test_calibration_settings_key_int8_engines_only():
    int8 = TensorRTConfig(precision="int8", calibration_video=Path("/data/a.mp4"), calibration_frames=64)
    key = cache_key(b"m", int8)
    assert cache_key(b"m", dataclasses.replace(int8, calibration_frames=32)) != key
    assert cache_key(b"m", dataclasses.replace(int8, calibration_video=Path("/data/b.mp4"))) != key
    # The same file name elsewhere: a vehicle finds the engine without the calibration video.
    assert cache_key(b"m", dataclasses.replace(int8, calibration_video=Path("/else/a.mp4"))) == key
    fp16 = TensorRTConfig(precision="fp16")
    assert cache_key(b"m", dataclasses.replace(fp16, calibration_frames=8)) == cache_key(b"m", fp16)
    # Device index and cache directory do not change what is built.
    assert cache_key(b"m", dataclasses.replace(fp16, device=1, cache_dir=Path("/x"))) == cache_key(b"m", fp16)


def test_engine_cache_dir_layout(tmp_path):
    key = "ab" * 32
    assert engine_cache_dir(tmp_path, Path("/models/yolox_nano_stage0.onnx"), "fp16", key) == \
        tmp_path / f"yolox_nano_stage0.fp16.{key[:16]}"


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_cache_dir(TensorRTConfig()) == tmp_path / ".cache" / "perception" / "tensorrt"
    assert resolve_cache_dir(TensorRTConfig(cache_dir=Path("~/engines"))) == tmp_path / "engines"
    assert resolve_cache_dir(TensorRTConfig(cache_dir=Path("/var/trt"))) == Path("/var/trt")


def test_cache_files_are_written_whole(tmp_path):
    target = tmp_path / "sub" / "x.flatbuffers"
    atomic_write(target, b"table")
    atomic_write(target, b"table2")
    assert target.read_bytes() == b"table2"
    assert [p.name for p in target.parent.iterdir()] == ["x.flatbuffers"]  # no temporary left behind


# ---------------------------------------------------------------------------- provider options


def test_fp16_provider_options(tmp_path):
    options = provider_options(TensorRTConfig(precision="fp16", workspace_mb=512, device=1), tmp_path / "e", tmp_path)
    assert options == {
        "device_id": "1",
        "trt_max_workspace_size": str(512 * 1024 * 1024),
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "e"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path),
    }
    assert all(isinstance(v, str) for v in options.values())


def test_fp32_turns_fp16_off_and_int8_reads_our_table(tmp_path):
    fp32 = provider_options(TensorRTConfig(precision="fp32"), tmp_path, tmp_path)
    assert fp32["trt_fp16_enable"] == "False" and fp32["trt_int8_enable"] == "False"
    assert "trt_int8_calibration_table_name" not in fp32
    int8 = provider_options(TensorRTConfig(precision="int8"), tmp_path, tmp_path)
    assert int8["trt_int8_enable"] == "True" and int8["trt_fp16_enable"] == "True"  # FP16 for layers without INT8
    assert int8["trt_int8_calibration_table_name"] == CALIBRATION_TABLE
    assert int8["trt_int8_use_native_calibration_table"] == "False"  # onnxruntime.quantization's flatbuffers table


def test_an_unknown_precision_is_named(tmp_path):
    with pytest.raises(ValueError, match="'bf16'"):
        provider_options(TensorRTConfig(precision="bf16"), tmp_path, tmp_path)  # type: ignore[arg-type]
    assert cuda_options(TensorRTConfig(device=2)) == {"device_id": "2"}


# ---------------------------------------------------------------------------- availability


def test_the_package_imports_without_tensorrt_cuda_or_onnx():
    code = ("import sys, perception.engines.tensorrt.runtime, perception.engines.tensorrt.build;"
            "print(sorted(m for m in sys.modules if m in ('tensorrt', 'onnx') or m.startswith(('cuda', 'onnxruntime.quantization'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_engine_table_points_at_this_package():
    from perception.engines.base import engine_class

    assert engine_class("tensorrt") is TensorRTEngine


@needs_no_tensorrt
def test_unavailable_reason_names_the_missing_provider():
    reason = TensorRTEngine.unavailable_reason(EngineConfig(kind="tensorrt"))
    assert reason == (f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider (it needs onnxruntime-gpu "
                      "and TensorRT 10, whose wheels come only from NVIDIA's index)")


@needs_no_tensorrt
def test_requesting_tensorrt_explicitly_raises_with_the_reason():
    with pytest.raises(EngineUnavailable, match="tensorrt unavailable: onnxruntime .* has no TensorrtExecutionProvider"):
        create_engine(EngineConfig(kind="tensorrt"))
    with pytest.raises(EngineUnavailable, match="has no TensorrtExecutionProvider"):
        TensorRTEngine(EngineConfig(kind="tensorrt"))


@needs_no_tensorrt
def test_auto_falls_back_to_onnxruntime_and_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="perception.engines.base"):
        engine = create_engine(EngineConfig(kind="auto", threads=1))
    assert engine.name == "onnxruntime"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tensorrt unavailable: onnxruntime" in m and "using onnxruntime" in m for m in warnings), warnings


@pytest.fixture
def engine_past_the_provider_check(monkeypatch):
    """The engine as it is built where the provider is listed: what comes before the GPU runs for real."""
    monkeypatch.setattr(TensorRTEngine, "unavailable_reason", classmethod(lambda cls, config: None))


@needs_no_tensorrt
@needs_quantization
@pytest.mark.skipif(not DASHCAM.is_file(), reason=f"{DASHCAM} is not in this checkout")
def test_prepare_makes_the_engine_folder_and_calibrates_int8_once(tmp_path, engine_past_the_provider_check, caplog):
    engine = _trt_engine(tmp_path, "int8", calibration_video=DASHCAM, calibration_frames=2, device=1)
    engine_dir, providers = engine.prepare(STAGE0_ONNX, "stage0", FULL_SIZE)
    assert engine_dir.parent == tmp_path / "cache" and engine_dir.name.startswith("yolox_nano_stage0.int8.")
    assert (engine_dir / CALIBRATION_TABLE).is_file()
    assert providers[0] == ("TensorrtExecutionProvider", provider_options(engine.settings, engine_dir, tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="perception.engines.tensorrt.calibration"):
        assert engine.prepare(STAGE0_ONNX, "stage0", FULL_SIZE)[0] == engine_dir
    assert not caplog.records, "the table is made once per engine folder"


@pytest.mark.parametrize("precision, direct", [("fp16", True), ("fp32", True), ("int8", False)])
def test_direct_graphs_are_opened_except_in_int8(tmp_path, engine_past_the_provider_check, precision, direct):
    """int8 calibrates a graph that takes the image whole and builds the later parts in fp16: a direct
    graph there would measure otherwise than the parts, and a frame may run either."""
    assert _trt_engine(tmp_path, precision).runs_direct_graphs is direct


@needs_no_tensorrt
def test_an_engine_folder_is_keyed_by_the_sizes_its_graph_names_only(tmp_path, engine_past_the_provider_check):
    engine = _trt_engine(tmp_path, "fp16")
    # The one-graph original has fixed sizes: pinning them changes nothing, so its engines are found again.
    assert engine.prepare(YOLOX_ONNX, "full", FULL_SIZE)[0] == engine.prepare(YOLOX_ONNX, "full")[0]
    # The staged parts name theirs: an engine for 416x416 is not one for 416x256.
    assert engine.prepare(STAGE0_ONNX, "stage0", FULL_SIZE)[0] != engine.prepare(STAGE0_ONNX, "stage0", {
        **FULL_SIZE, "height": 256})[0]


@needs_no_tensorrt
@pytest.mark.filterwarnings("ignore:Specified provider 'TensorrtExecutionProvider' is not in available provider names")
def test_a_session_without_the_tensorrt_provider_is_refused_not_run_on_the_cpu(tmp_path, engine_past_the_provider_check):
    # onnxruntime drops a provider it cannot start with only a warning; explicit tensorrt must not run elsewhere.
    with pytest.raises(EngineUnavailable, match=r"^full: onnxruntime did not start its TensorRT provider for .*yolox_nano\.onnx "
                                                r"\(running on \['CPUExecutionProvider'\]"):
        _trt_engine(tmp_path, "fp16").open(YOLOX_ONNX, "full")


# ---------------------------------------------------------------------------- INT8 calibration


def test_a_dynamic_batch_is_calibrated_as_one_frame_other_dynamic_sizes_are_refused():
    assert static_input_shape("images", ("batch", 3, 416, 416)) == (1, 3, 416, 416)
    assert static_input_shape("images", (None, 3, 416, 416)) == (1, 3, 416, 416)
    assert static_input_shape("images", (1, 3, 416, 416)) == (1, 3, 416, 416)
    with pytest.raises(EngineUnavailable, match=r"input images has dynamic dimensions \[1, 3, -1, -1\]"):
        static_input_shape("images", (1, 3, "h", "w"))


def test_only_parts_fed_by_the_image_can_be_calibrated_on_frames():
    assert image_input(STAGE0_ONNX, "stage0", FULL_SIZE) == ("images", (1, 3, 416, 416))
    assert image_input(STAGE0_ONNX, "stage0", {**FULL_SIZE, "height": 256}) == ("images", (1, 3, 256, 416))
    with pytest.raises(EngineUnavailable, match=r"input images has dynamic dimensions \[1, 3, -1, -1\] beyond the batch "
                                                r"and no sizes for them"):
        image_input(STAGE0_ONNX, "stage0")
    with pytest.raises(EngineUnavailable, match=r"stage1: int8 calibration feeds letterboxed frames, .*dark3.*fp16"):
        image_input(STAGE1_ONNX, "stage1")


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
    with caplog.at_level(logging.WARNING, logger="perception.engines.tensorrt.calibration"):
        batches = list(calibration_batches(tiny_video, 50, 32, 32))
    assert len(batches) == 20
    assert any("only 20 of the 50 frames" in r.getMessage() for r in caplog.records)


def test_a_missing_or_unset_calibration_video_is_a_clear_error(tmp_path):
    with pytest.raises(EngineUnavailable, match=r"int8 calibration: video .*gone\.mp4: file not found"):
        calibration_batches(tmp_path / "gone.mp4", 8, 416, 416)
    with pytest.raises(EngineUnavailable, match="int8 needs a calibration video"):
        calibration_batches(None, 8, 416, 416)


def _read_table(path: Path) -> dict[str, float]:
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    table = TrtTable.GetRootAsTrtTable(path.read_bytes(), 0)
    return {table.Dict(i).Key().decode(): float(table.Dict(i).Value()) for i in range(table.DictLength())}


@needs_quantization
@pytest.mark.skipif(not DASHCAM.is_file(), reason=f"{DASHCAM} is not in this checkout")
def test_the_calibration_table_comes_from_real_frames_on_the_cpu(tmp_path):
    table_path = tmp_path / CALIBRATION_TABLE
    assert write_calibration_table(STAGE0_ONNX, "stage0", table_path, DASHCAM, 4, FULL_SIZE) == 4
    ranges = _read_table(table_path)
    # A range for every tensor the provider may run in INT8, the input and outputs included.
    assert {"images", "dark3", "dark4"} <= set(ranges)
    assert all(np.isfinite(v) and v >= 0 for v in ranges.values())
    assert 100 < ranges["images"] <= 255  # pixels, 0-255 as the detector feeds them
    assert sorted(p.name for p in tmp_path.iterdir()) == [CALIBRATION_TABLE]  # no working files left


@needs_quantization
def test_calibration_on_an_empty_video_is_named(tmp_path, tiny_video):
    with pytest.raises(EngineUnavailable, match=r"int8 calibration: .*gone\.mp4: file not found"):
        write_calibration_table(STAGE0_ONNX, "stage0", tmp_path / CALIBRATION_TABLE, tmp_path / "gone.mp4", 4, FULL_SIZE)
    with pytest.raises(EngineUnavailable, match=r"int8 calibration: .* gave no frames"):
        write_calibration_table(STAGE0_ONNX, "stage0", tmp_path / CALIBRATION_TABLE, tiny_video, 0, FULL_SIZE)


# ---------------------------------------------------------------------------- CLI


@needs_no_tensorrt
def test_build_engine_without_tensorrt_prints_the_reason_and_fails(capsys):
    assert build_main([str(WEIGHTS_DIR / "yolox_nano.json"), "--precision", "fp32"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("build-engine: tensorrt unavailable: onnxruntime ") and "\n" not in err


@needs_no_tensorrt
def test_build_engine_is_wired_into_the_perception_cli():
    result = subprocess.run([sys.executable, "-m", "perception.cli", "build-engine", "yolox_nano.json"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "tensorrt unavailable: onnxruntime" in result.stderr


def test_build_engine_names_a_bad_manifest_or_argument(tmp_path, capsys):
    assert build_main([str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert build_main([str(WEIGHTS_DIR / "yolox_nano.json"), "--workspace-mb", "0"]) == 2
    assert "workspace_mb must be in [1, 1048576], got 0" in capsys.readouterr().err


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
# fp32 may run TF32 on Ampere and newer (the provider cannot clear TensorRT's TF32 flag): a looser bound.
@pytest.mark.parametrize("precision, score_atol, box_atol", [("fp32", 5e-3, 5e-2), ("fp16", 0.03, 0.3)])
def test_tensorrt_matches_onnxruntime(tmp_path, precision, score_atol, box_atol):
    images = _dashcam_input()
    expected = _onnxruntime_output(images)
    session = _trt_engine(tmp_path, precision).open(YOLOX_ONNX, "full")
    assert session.input_names == ("images",) and session.output_names == ("output",)
    got = session.run({"images": images})["output"]
    assert got.shape == expected.shape == (1, 3549, 85) and got.dtype == np.float32
    np.testing.assert_allclose(got[..., 4:], expected[..., 4:], atol=score_atol)  # objectness, classes: 0..1
    np.testing.assert_allclose(got[..., :4], expected[..., :4], atol=box_atol, rtol=0.02)  # box regressions


@needs_tensorrt_gpu
@pytest.mark.timeout(600)
def test_engines_are_cached_per_model_and_reused(tmp_path):
    _trt_engine(tmp_path, "fp16").open(YOLOX_ONNX, "full")
    engine_dir, _ = _trt_engine(tmp_path, "fp16").prepare(YOLOX_ONNX, "full")
    engines = sorted(engine_dir.glob("*.engine"))
    assert engines, f"no engine cached in {engine_dir}"
    assert list((tmp_path / "cache").glob("*.timing")), "the timing cache is shared, in the cache root"
    _trt_engine(tmp_path, "fp16").open(YOLOX_ONNX, "full")
    assert sorted(engine_dir.glob("*.engine")) == engines  # reused, not rebuilt


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
    with pytest.raises(EngineUnavailable, match=r"x: onnxruntime cannot open .*bad\.onnx on TensorRT"):
        _trt_engine(tmp_path, "fp32").open(bad, "x")
    with pytest.raises(EngineUnavailable, match="gone.onnx does not exist"):
        _trt_engine(tmp_path, "fp32").open(tmp_path / "gone.onnx", "x")


@needs_tensorrt_gpu
@needs_quantization
@pytest.mark.timeout(600)
def test_int8_calibrates_on_real_frames(tmp_path):
    engine = _trt_engine(tmp_path, "int8", calibration_video=DASHCAM, calibration_frames=16)
    session = engine.open(YOLOX_ONNX, "full")
    engine_dir, _ = engine.prepare(YOLOX_ONNX, "full")
    assert (engine_dir / CALIBRATION_TABLE).is_file() and list(engine_dir.glob("*.engine"))
    images = _dashcam_input()
    got = session.run({"images": images})["output"]
    expected = _onnxruntime_output(images)
    # INT8 is lossy: the scores must still track ONNX Runtime's.
    assert np.corrcoef(got[0, :, 4], expected[0, :, 4])[0, 1] > 0.9
