import json

import pytest

from perception.benchmarks.detector import EVAL_ANNOTATIONS, EVAL_VIDEO
from perception.config import ConfigError
from perception.detection.network import StagedNetwork
from perception.detection.manifest import load_manifest
from perception.engines import EngineConfig, create_engine
from perception.evaluation.detector_eval import load_annotations, evaluate_on_video


def test_full_yolox_nano_reproduces_its_known_accuracy_on_the_bundled_clip():
    manifest = load_manifest("yolox_nano.json")
    detector = StagedNetwork(manifest, create_engine(EngineConfig()))
    report = evaluate_on_video(detector, EVAL_VIDEO, load_annotations(EVAL_ANNOTATIONS, manifest.class_names()))
    # Published for this model on these 69 frames with pycocotools: AP50 0.84, AP50:95 0.38.
    assert report.ap.ap50 == pytest.approx(0.844, abs=0.005)
    assert report.ap.ap == pytest.approx(0.387, abs=0.005)
    assert report.exit_histogram == {0: 69} and len(report.detector_ms) == 69


def test_annotation_problems_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: annotation file not found"):
        load_annotations(tmp_path / "nope.json", ["person"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(ConfigError, match="bad.json: not COCO annotations with frame indices"):
        load_annotations(bad, ["person"])


def test_annotations_of_a_class_the_model_lacks_name_it(tmp_path):
    from perception.config import ConfigError
    from perception.evaluation.detector_eval import load_annotations

    path = tmp_path / "a.json"
    path.write_text('{"images": [{"id": 1, "frame_index": 0}], "annotations": [], '
                    '"categories": [{"id": 1, "name": "person"}]}')
    with pytest.raises(ConfigError) as error:
        load_annotations(path, ["car", "van"])
    assert str(error.value) == f"{path}: annotates person, which the detector's model has no class for (its classes: car, van)"
