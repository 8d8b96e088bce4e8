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
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"perception replay: {REPO / 'configs/detector.yaml'} (node detector): {garbage}: neither a manifest nor an "
        "ONNX model onnxruntime can load (")


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


class FreeSize(torch.nn.Module):
    """The Ultralytics layout on any input size: anchors follow the input, as an export with dynamic=True's do."""

    def forward(self, images):  # noqa: ANN001, ANN201
        pooled = [torch.nn.functional.avg_pool2d(images[:, :1], s) for s in (8, 16, 32)]
        anchors = torch.cat([p.flatten(1) for p in pooled], 1)  # [1, N]
        return torch.cat([anchors.expand(4, -1), anchors.expand(3, -1) * 0], 0).unsqueeze(0)


def test_a_graph_of_free_size_is_run_once_to_see_its_layout_and_then_runs_each_frame_at_its_aspect(tmp_path):
    model = tmp_path / "free.onnx"
    torch.onnx.export(FreeSize(), (torch.zeros(1, 3, SIDE, SIDE),), str(model), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False,
                      dynamic_axes={"images": {2: "height", 3: "width"}, "output0": {2: "anchors"}})
    manifest = load_manifest(model)
    assert (manifest.output_layout, manifest.num_classes, manifest.input.fit_aspect) == ("yolov8", 3, True)
    assert (manifest.input.width, manifest.input.height) == (416, 416)  # the default pixel budget
    model.with_suffix(".names").write_text("person\nbicycle\ncar\n")
    network = _network(model)
    assert network.begin(np.zeros((720, 1280, 3), np.uint8)).tensors["images"].shape == (1, 3, 288, 512)


@pytest.mark.parametrize("names, message", [
    ({str(i): f"c{i}" for i in range(3)}, None),  # string keys, as JSON writes them: by number, not text
    ({0: "a", 1: "b", 3: "c"}, "its metadata's class names are not indexed 0 to 2"),
])
def test_metadata_class_names_are_taken_by_index(tmp_path, names, message):
    model = _export(YoloV8Layout(), tmp_path / "m.onnx", {"names": repr(names)})
    if message is None:
        assert load_manifest(model).class_names() == ["c0", "c1", "c2"]
    else:
        with pytest.raises(ConfigError, match=message):
            load_manifest(model)


def test_ultralytics_coco_names_become_the_bundled_ones_the_default_rules_use(tmp_path):
    from perception.detection.classes import COCO_CLASSES, read_class_names
    from perception.detection.onnx_model import COCO_SYNONYMS

    coco = read_class_names(COCO_CLASSES)
    ultralytics = {i: {v: k for k, v in COCO_SYNONYMS.items()}.get(n, n) for i, n in enumerate(coco)}
    assert ultralytics[3] == "motorcycle" and ultralytics[62] == "tv"

    class Eighty(YoloV8Layout):
        def forward(self, images):  # noqa: ANN001, ANN201
            return torch.zeros(1, 84, ANCHORS) + images.mean()

    model = _export(Eighty(), tmp_path / "yolov8n.onnx", {"names": repr(ultralytics), "task": "detect"})
    assert load_manifest(model).class_names() == coco
    check_settings(DetectorSettings(model=model))  # the default risk classes (motorbike, ...) are the model's


class HalfFixed(torch.nn.Module):
    def forward(self, images):  # noqa: ANN001, ANN201
        return images.mean((2, 3))


class ByteInput(torch.nn.Module):
    def forward(self, images):  # noqa: ANN001, ANN201
        return YoloV8Layout()(images.float() / 255)


def test_an_input_of_another_type_or_one_free_side_is_one_line_before_start(tmp_path):
    half = tmp_path / "half.onnx"
    torch.onnx.export(HalfFixed(), (torch.zeros(1, 3, SIDE, SIDE),), str(half), input_names=["images"],
                      output_names=["out"], opset_version=17, dynamo=False, dynamic_axes={"images": {3: "width"}})
    with pytest.raises(ConfigError, match=r"half.onnx: its input \[1, 3, 320, 'width'\] fixes one side and frees the other"):
        load_manifest(half)
    byte = tmp_path / "byte.onnx"
    torch.onnx.export(ByteInput(), (torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8),), str(byte), input_names=["images"],
                      output_names=["out"], opset_version=17, dynamo=False)
    with pytest.raises(ConfigError, match=r"byte.onnx: its input images is tensor\(uint8\); a plain ONNX detector takes float32"):
        load_manifest(byte)


def test_class_wise_nms_keeps_classes_apart_when_unclipped_boxes_reach_below_zero():
    from perception.detection.yolox import nms_per_class

    boxes = np.array([[-300, -300, -100, -100], [-290, -290, -110, -110], [10, 10, 50, 50]], np.float32)
    # Class 1's box far off the frame, class 0's two boxes elsewhere: no box may suppress another class's.
    kept = nms_per_class(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 0, 0]), 0.45)
    assert sorted(kept.tolist()) == [0, 1, 2]


def test_a_path_given_on_the_command_line_is_relative_to_where_the_user_stands(tmp_path, monkeypatch):
    from perception.config import command_line_overrides

    monkeypatch.chdir(tmp_path)
    assert command_line_overrides(["model=m.onnx", "engine.tensorrt.cache_dir=cache", "engine.tensorrt.calibration_video=null",
                                   "policy.kind=adaptive", "score_threshold=0.4"], "--detector", DetectorSettings) == {
        "model": str(tmp_path / "m.onnx"), "engine.tensorrt.cache_dir": str(tmp_path / "cache"),
        "engine.tensorrt.calibration_video": None, "policy.kind": "adaptive", "score_threshold": 0.4}
