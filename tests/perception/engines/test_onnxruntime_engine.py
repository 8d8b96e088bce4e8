import subprocess
import sys

import numpy as np
import pytest

from perception.detection.manifest import WEIGHTS_DIR
from perception.engines import EngineConfig, EngineUnavailable, create_engine
from perception.engines.onnxruntime_engine import session_options


def test_runs_the_model_by_input_and_output_name():
    engine = create_engine(EngineConfig(threads=1))
    session = engine.open(WEIGHTS_DIR / "yolox_nano.onnx", "full")
    assert session.input_names == ("images",) and session.output_names == ("output",)
    out = session.run({"images": np.full((1, 3, 416, 416), 114, np.float32)})
    assert out["output"].shape == (1, 3549, 85)


def test_missing_and_corrupt_model_files_are_named(tmp_path):
    engine = create_engine(EngineConfig())
    with pytest.raises(EngineUnavailable, match="gone.onnx does not exist"):
        engine.open(tmp_path / "gone.onnx", "x")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a model")
    with pytest.raises(EngineUnavailable, match="bad.onnx: onnxruntime cannot load it"):
        engine.open(bad, "x")


def test_an_execution_provider_this_build_lacks_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(EngineUnavailable, match="FooExecutionProvider"):
        create_engine(EngineConfig(providers=["FooExecutionProvider"]))


def test_the_vehicle_runtime_never_imports_torch_or_tensorrt_unless_asked():
    # kind 'auto' and 'tensorrt' ask ONNX Runtime for its TensorRT provider; the default imports neither library.
    code = (
        "import sys, nodes.detector, nodes.capture, perception.detection.builder, perception.evaluation.detector_eval;"
        "from perception.engines import create_engine, EngineConfig; create_engine(EngineConfig());"
        "print(sorted(m for m in ('torch', 'tensorrt', 'torchvision') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_worker_threads_do_not_spin_unless_asked():
    """Spinning ORT threads starve the other nodes on a small CPU (docs/BENCHMARKS.md)."""
    key = "session.intra_op.allow_spinning"
    assert session_options(EngineConfig(threads=2)).get_session_config_entry(key) == "0"
    assert session_options(EngineConfig(threads=2, spin=True)).get_session_config_entry(key) == "1"


def test_tensorrt_listed_among_the_providers_gets_fixed_input_sizes(monkeypatch):
    """ONNX Runtime's TensorRT provider builds an engine per input shape, also when listed by hand."""
    import onnxruntime as ort

    from perception.engines.onnxruntime_engine import OnnxRuntimeEngine

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert not OnnxRuntimeEngine(EngineConfig(providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])).any_input_size
    assert OnnxRuntimeEngine(EngineConfig(providers=["CPUExecutionProvider"])).any_input_size
