"""The PyTorch rebuild of YOLOX-nano against the original ONNX model, on real images."""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from perception.detection.yolox import letterbox  # noqa: E402
from perception.training.yolox_torch import ORIGINAL_ONNX, YOLOXNanoExits, build_model, load_original_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
EVAL_VIDEO = REPO / "recordings" / "pets09_vtest_eval.avi"


def video_frame(path: Path, index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"cannot read frame {index} of {path}"
    return frame


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    frames = [cv2.imread(str(REPO / "tests" / "data" / "udacity_test1.jpg"))]
    frames += [video_frame(EVAL_VIDEO, i) for i in (0, 60)]
    return [letterbox(frame, 416, 416)[0] for frame in frames]


@pytest.fixture(scope="module")
def model() -> YOLOXNanoExits:
    torch.set_num_threads(2)
    return build_model()


def test_full_depth_matches_the_onnx_model_on_real_images(model, images):
    session = ort.InferenceSession(str(ORIGINAL_ONNX), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        for x in images:
            reference = session.run(None, {"images": x})[0]
            output = model.full_depth(torch.from_numpy(x)).numpy()
            assert output.shape == reference.shape == (1, 3549, 85)
            assert np.abs(output - reference).max() <= 1e-3


def test_every_exit_has_the_yolox_raw_layout(model, images):
    with torch.inference_mode():
        outputs = model(torch.from_numpy(images[0]))
    for output in outputs:
        assert tuple(output.shape) == (1, 3549, 85)
        scores = output[..., 4:]
        assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0  # obj and classes sigmoided


def test_deepest_exit_is_the_full_depth_network(model, images):
    with torch.inference_mode():
        x = torch.from_numpy(images[1])
        assert torch.equal(model(x)[-1], model.full_depth(x))


def test_the_shallow_exit_finds_the_people_the_full_network_finds(model, images):
    """The distilled exit, not just shaped right: its confident person anchors overlap the teacher's."""
    with torch.inference_mode():
        shallow, deep = model(torch.from_numpy(images[2]))
    person = lambda out: (out[0, :, 4] * out[0, :, 5]).numpy() > 0.3  # noqa: E731 - person is COCO class 0
    teacher, student = person(deep), person(shallow)
    assert teacher.sum() > 0
    assert (teacher & student).sum() >= 0.5 * teacher.sum()


def test_weights_of_a_different_network_are_refused(tmp_path):
    import onnx

    graph = onnx.load(str(ORIGINAL_ONNX))
    graph.graph.node.remove(next(n for n in graph.graph.node if n.op_type == "Conv"))
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))
    with pytest.raises(ValueError, match="convs"):
        load_original_weights(YOLOXNanoExits(), broken)
