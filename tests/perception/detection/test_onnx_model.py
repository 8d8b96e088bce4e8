"""A plain ONNX detector runs where a manifest does: its manifest inferred from the graph (layout,
input, preprocessing, class names), and one clear line for a graph it cannot run."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from perception import REPO
from perception.config import ConfigError
from perception.decision import DecisionRules
from perception.detection.risk import RiskConfig
from perception.detection.builder import DetectorSettings, build_network, check_settings
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.engines import EngineConfig

DATA = Path(__file__).resolve().parents[2] / "data"
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

SIDE = 320  # the test graphs' fixed input: 40x40 + 20x20 + 10x10 anchor points
ANCHORS = 2100
NAMES = {0: "person", 1: "bicycle", 2: "car"}


def _network(model: Path, threshold: float = 0.3):
    risk = RiskConfig(rules=DecisionRules(classes=["person", "car"]))  # classes the test graphs have
    return build_network(DetectorSettings(model=model, engine=EngineConfig(threads=1), risk=risk), score_threshold=threshold)


def test_the_bundled_yolox_graph_alone_detects_exactly_as_its_manifest_does():
    plain, manifested = _network(WEIGHTS_DIR / "yolox_nano.onnx"), _network(WEIGHTS_DIR / "yolox_nano.json")
    assert plain.manifest.output_layout == "yolox" and plain.manifest.class_names() == manifested.manifest.class_names()
    frame = cv2.imread(str(DATA / "udacity_test1.jpg"))
    a, b = plain.detect(frame), manifested.detect(frame)
    assert len(a.boxes) >= 2  # the two cars ahead
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


class YoloV8Layout(torch.nn.Module):
    """Ultralytics' output convention [1, 4 + classes, anchors], boxes as centre and size in input
    pixels: a car whose score is the image's mean red in 0-1 (so a BGR or 0-255 input scores it
    wrong) and a person scored 0.9 overlapping it (class-wise NMS keeps both)."""

    def forward(self, images):  # noqa: ANN001, ANN201
        raw = torch.zeros(1, 4 + len(NAMES), ANCHORS)
        red = images[0, 0].mean()
        car = torch.stack([torch.tensor(100.0), torch.tensor(80.0), torch.tensor(40.0), torch.tensor(60.0),
                           torch.tensor(0.0), torch.tensor(0.0), torch.where(red <= 1, red, torch.zeros(()))])
        person = torch.tensor([110.0, 90.0, 40.0, 60.0, 0.9, 0.0, 0.0])
        return raw.index_copy(2, torch.tensor([5, 1700]), torch.stack([car, person], 1).unsqueeze(0))


def _export(module: torch.nn.Module, path: Path, metadata: dict[str, str], outputs=("output0",)) -> Path:  # noqa: ANN001
    torch.onnx.export(module, (torch.zeros(1, 3, SIDE, SIDE),), str(path), input_names=["images"],
                      output_names=list(outputs), opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_an_ultralytics_layout_decodes_with_its_preprocessing_and_names(tmp_path):
    model = _export(YoloV8Layout(), tmp_path / "custom.onnx", {"names": repr(NAMES), "task": "detect", "stride": "32"})
    manifest = load_manifest(model)
    assert (manifest.output_layout, manifest.num_classes, manifest.class_names()) == ("yolov8", 3, list(NAMES.values()))
    assert (manifest.input.channels, manifest.input.width, manifest.input.fit_aspect) == ("rgb", SIDE, False)
    network = _network(model)
    frame = np.zeros((640, 640, 3), np.uint8)
    frame[:, :] = (51, 0, 204)  # BGR: red 0.8, blue 0.2 in 0-1
    outcome = network.detect(frame)
    found = sorted(zip(outcome.class_ids.tolist(), [round(s, 3) for s in outcome.scores.tolist()],
                       outcome.boxes.round(1).tolist()))
    # Input pixels to frame pixels: the 640-pixel frame ran at 320, so x2.
    assert found == [(0, 0.9, [180.0, 120.0, 260.0, 240.0]), (2, 0.8, [160.0, 100.0, 240.0, 220.0])]


def test_class_names_come_from_a_names_file_beside_the_model_without_metadata(tmp_path):
    model = _export(YoloV8Layout(), tmp_path / "custom.onnx", {})
    (tmp_path / "custom.names").write_text("walker\nbike\nvan\n")
    assert load_manifest(model).class_names() == ["walker", "bike", "van"]
    (tmp_path / "custom.names").write_text("walker\n")
    with pytest.raises(ConfigError, match=r"custom.onnx: 1 class names in .*custom.names for the 3 classes"):
        load_manifest(model)


class TwoOutputs(torch.nn.Module):
    def forward(self, images):  # noqa: ANN001, ANN201
        return images.mean((2, 3)), images.amax((2, 3))


class OtherLayout(torch.nn.Module):
    def forward(self, images):  # noqa: ANN001, ANN201
        return images.mean(1).reshape(1, -1, 10)


@pytest.mark.parametrize("module, outputs, metadata, message", [
    (TwoOutputs(), ("a", "b"), {}, "a plain ONNX detector has one output, this graph has 2 (a, b); write a manifest"),
    (YoloV8Layout(), ("output0",), {"task": "segment"}, "an Ultralytics segment model; only detection models"),
    (OtherLayout(), ("output0",), {}, "output output0 [1, 10240, 10] is in no layout this project decodes"),
])
def test_a_graph_it_cannot_run_is_one_line_naming_the_file(tmp_path, module, outputs, metadata, message):
    model = _export(module, tmp_path / "model.onnx", metadata, outputs)
    with pytest.raises(ConfigError) as error:
        check_settings(DetectorSettings(model=model))
    assert str(error.value).startswith(f"{model}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_risk_classes_the_model_lacks_are_named_with_the_classes_it_has(tmp_path):
    model = _export(YoloV8Layout(), tmp_path / "custom.onnx", {"names": repr(NAMES)})
    with pytest.raises(ConfigError) as error:
        check_settings(DetectorSettings(model=model))
    assert str(error.value) == ("risk.rules: classes ['motorbike', 'bus', 'truck', 'dog', 'horse', 'cow'] are not classes "
                                "of the detector custom.onnx (its classes: person, bicycle, car); set risk.rules.classes "
                                "and the decision node's rules.classes to classes it has")


def test_the_torch_engine_refuses_a_plain_model_rather_than_run_yolox_in_its_place(tmp_path):
    with pytest.raises(ConfigError, match="the torch engine runs the PyTorch rebuild of the bundled YOLOX-nano only"):
        check_settings(DetectorSettings(model=WEIGHTS_DIR / "yolox_nano.onnx", engine=EngineConfig(kind="torch")))


def test_replay_with_a_file_that_is_no_model_says_so_before_anything_starts(tmp_path):
    garbage = tmp_path / "weights.bin"
    garbage.write_bytes(bytes(range(256)) * 12)
    relative = garbage.relative_to(tmp_path)  # typed relative to where the user stands, not to configs/
    result = subprocess.run([sys.executable, "-m", "perception.cli", "replay", str(REPO / "recordings/udacity_approach.mcap"),
                             "--detector", f"model={relative}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"perception replay: {REPO / 'configs/detector.yaml'} (node detector): {garbage}: neither a manifest nor an "
        "ONNX model onnxruntime can load ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from "
        f"{garbage} failed:Protobuf parsing failed.)"]


def test_ultralytics_boxes_are_suppressed_before_they_are_clipped_to_the_frame_as_ultralytics_does():
    """Two cars reaching past the right edge: unclipped they overlap little (IoU 0.33), clipped a lot
    (0.6). Ultralytics suppresses first, so both are kept; clipping first would drop one."""
    from perception.detection.yolov8 import decode_yolov8
    from perception.detection.yolox import Letterbox

    raw = np.zeros((1, 5, ANCHORS), np.float32)
    raw[0, :, 0] = [300, 100, 80, 40, 0.9]  # x 260-340 on a 320-wide frame
    raw[0, :, 1] = [340, 100, 80, 40, 0.8]  # x 300-380
    boxes, scores, _ = decode_yolov8(raw, Letterbox(1.0, SIDE, SIDE, SIDE, SIDE), (8, 16, 32), 0.3, 0.45)
    assert boxes.tolist() == [[260, 80, 320, 120], [300, 80, 320, 120]] and len(scores) == 2
