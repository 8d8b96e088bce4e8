"""The PyTorch engine runs the same parts as onnxruntime does on the exported ONNX files."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from perception.detection.manifest import load_manifest  # noqa: E402
from perception.detection.yolox import letterbox  # noqa: E402
from perception.engines.base import EngineConfig, EngineUnavailable, create_engine  # noqa: E402
from perception.engines.onnxruntime_engine import OnnxRuntimeEngine  # noqa: E402
from perception.engines.torch_engine import TorchEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
MANIFEST = REPO / "perception" / "weights" / "yolox_nano_exits.json"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return letterbox(cv2.imread(str(REPO / "tests" / "data" / "udacity_test1.jpg")), 416, 416)[0]


def test_available_when_torch_is_installed():
    assert TorchEngine.unavailable_reason(EngineConfig(kind="torch")) is None
    assert isinstance(create_engine(EngineConfig(kind="torch", threads=2)), TorchEngine)


@pytest.mark.parametrize("input_size, anchors", [((416, 416), 3549), ((416, 256), 2184)])  # square, fitted to 16:9
def test_every_part_agrees_with_onnxruntime(input_size, anchors):
    manifest = load_manifest(MANIFEST)
    frame = cv2.imread(str(REPO / "tests" / "data" / "udacity_test1.jpg"))
    image = letterbox(frame, 416, 416, input_size=input_size)[0]
    engines = [TorchEngine(EngineConfig(kind="torch", threads=2)), OnnxRuntimeEngine(EngineConfig(threads=2))]
    tensors = [{"images": image}, {"images": image}]
    parts = [(s.name, s.file) for s in manifest.stages] + [(e.name, e.file) for e in manifest.exits]
    for name, file in parts:
        for engine, known in zip(engines, tensors):
            session = engine.open(file, name)
            known.update(session.run({n: known[n] for n in session.input_names}))
    for exit_ in manifest.exits:
        torch_out, ort_out = tensors[0][exit_.output], tensors[1][exit_.output]
        assert torch_out.dtype == np.float32 and torch_out.shape == (1, anchors, 85)
        assert np.abs(torch_out - ort_out).max() <= 1e-3


def test_the_one_stage_manifest_runs_the_full_network(image):
    manifest = load_manifest("yolox_nano.json")
    session = TorchEngine(EngineConfig(kind="torch")).open(manifest.stages[0].file, "full")
    reference = OnnxRuntimeEngine(EngineConfig()).open(manifest.stages[0].file, "full").run({"images": image})
    assert np.abs(session.run({"images": image})["output"] - reference["output"]).max() <= 1e-3


def test_an_unknown_part_is_a_clear_error():
    with pytest.raises(EngineUnavailable, match="no PyTorch part named 'stage7'"):
        TorchEngine(EngineConfig(kind="torch")).open(MANIFEST.parent / "yolox_nano_stage0.onnx", "stage7")


def test_an_unusable_device_is_reported_not_raised():
    reason = TorchEngine.unavailable_reason(EngineConfig(kind="torch", torch_device="no-such-device"))
    assert reason is not None and "\n" not in reason


def test_only_cuda_is_an_engine_whose_first_run_at_an_input_size_is_costly():
    # On CUDA a first run at a new input size took 90-120 ms against 11 (H200, docs/BENCHMARKS.md "GPU"):
    # detectors warm every frame size then; on the CPU they do not delay a first frame for it.
    assert TorchEngine(EngineConfig(kind="torch")).compiles_per_input_size is False
    assert OnnxRuntimeEngine(EngineConfig()).compiles_per_input_size is False
    if torch.cuda.is_available():
        assert TorchEngine(EngineConfig(kind="torch", torch_device="cuda")).compiles_per_input_size is True


def test_the_module_imports_without_torch():
    # Simulate a runtime install: torch made unimportable, the engine module must still import.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from perception.engines.torch_engine import TorchEngine\n"
            "from perception.engines.base import EngineConfig\n"
            "print(TorchEngine.unavailable_reason(EngineConfig(kind='torch')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "torch is not installed" in result.stdout


def test_its_parts_take_and_give_the_tensors_the_manifest_names():
    """...and it runs the parts' PyTorch modules even where the manifest names a direct graph (an ONNX
    merge of them, which it has no module for): full depth is stage0, stage1, exit1."""
    from perception.detection.network import StagedNetwork

    network = StagedNetwork(load_manifest(MANIFEST), TorchEngine(EngineConfig(kind="torch", threads=2)))
    assert load_manifest(MANIFEST).exits[-1].direct_file is not None and not network.has_direct(1)
    inference = network.begin(np.full((256, 416, 3), 114, np.uint8))
    network.run_exit(inference, 1)
    assert [part for part, _, _ in inference.timings] == ["preprocess", "stage0", "stage1", "exit1"]
    network.close()
