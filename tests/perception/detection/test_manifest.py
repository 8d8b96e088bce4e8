import json

import pytest

from perception.config import ConfigError
from perception.detection.manifest import load_manifest


def manifest(tmp_path, **changes):
    data = json.loads(load_manifest.__globals__["WEIGHTS_DIR"].joinpath("yolox_nano.json").read_text())
    data["stages"][0]["file"] = str(load_manifest.__globals__["WEIGHTS_DIR"] / "yolox_nano.onnx")
    data["classes_file"] = str(load_manifest.__globals__["WEIGHTS_DIR"] / "coco_classes.txt")
    data.update(changes)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return path


def test_bundled_manifest_loads_by_name():
    m = load_manifest("yolox_nano.json")
    assert m.anchor_count == 3549 and len(m.class_names()) == 80


def test_missing_model_file_is_named(tmp_path):
    path = manifest(tmp_path, stages=[{"name": "full", "file": "gone.onnx", "inputs": ["images"], "outputs": ["output"]}])
    with pytest.raises(ConfigError, match=r"model file .*gone.onnx does not exist"):
        load_manifest(path)


def test_an_exit_needing_features_not_yet_computed_is_rejected(tmp_path):
    path = manifest(tmp_path, exits=[{"name": "e", "after_stage": 0, "file": None, "inputs": ["feat9"], "output": "feat9"}])
    with pytest.raises(ConfigError, match=r"exit e needs \['feat9'\], not available after stage 0"):
        load_manifest(path)


def test_misspelled_manifest_key_is_named(tmp_path):
    path = manifest(tmp_path, stirdes=[8])
    with pytest.raises(ConfigError, match="stirdes: unknown key"):
        load_manifest(path)


@pytest.mark.parametrize("fit_aspect", [True, False])
def test_the_input_must_come_in_multiples_of_the_largest_stride(tmp_path, fit_aspect):
    path = manifest(tmp_path, input={"name": "images", "width": 416, "height": 400, "fit_aspect": fit_aspect})
    with pytest.raises(ConfigError, match=r"input width and height must be multiples of the largest stride 32, got 416x400"):
        load_manifest(path)


def test_named_dimensions_for_an_input_size():
    dims = load_manifest("yolox_nano_exits.json").dimensions(416, 256)
    assert dims == {"height": 256, "width": 416, "height_8": 32, "width_8": 52, "height_16": 16, "width_16": 26,
                    "height_32": 8, "width_32": 13, "anchors": 52 * 32 + 26 * 16 + 13 * 8}


def test_a_direct_graph_must_exist_and_every_part_that_runs_needs_its_own_short_name(tmp_path):
    full = {"name": "full", "after_stage": 0, "file": None, "inputs": ["output"], "output": "output"}
    with pytest.raises(ConfigError, match=r"model file .*gone_direct.onnx does not exist"):
        load_manifest(manifest(tmp_path, exits=[full | {"direct_file": "gone_direct.onnx"}]))
    stage = {"name": "full", "file": "yolox_nano.onnx", "inputs": ["images"], "outputs": ["output"]}
    with pytest.raises(ConfigError, match=r"part name 'a_long_stage_name' cannot be timed: .*'det.a_long_stage_name' "
                                          r"is not a name \(1-16 of letters"):
        load_manifest(manifest(tmp_path, stages=[stage | {"name": "a_long_stage_name"}]))
    with pytest.raises(ConfigError, match=r"part name 'stage 0' cannot be timed"):
        load_manifest(manifest(tmp_path, stages=[stage | {"name": "stage 0"}]))
    with pytest.raises(ConfigError, match=r"part names \['preprocess'\] are the detector's own steps"):
        load_manifest(manifest(tmp_path, stages=[stage | {"name": "preprocess"}]))
    head = {"name": "full.direct", "after_stage": 0, "file": "yolox_nano.onnx", "inputs": ["output"], "output": "output2"}
    with pytest.raises(ConfigError, match=r"the names of the parts that run must differ"):
        load_manifest(manifest(tmp_path, exits=[full | {"direct_file": "yolox_nano.onnx"}, head]))


def test_a_model_with_more_parts_than_a_detections_message_can_stamp_is_refused(tmp_path):
    # Each part a frame runs adds its stamp to the detections, which carry at most 24 (the frame's 4 and
    # the detector's recv, warm, flow, post): a 17th part would make the detector fail on its first frame.
    weights = load_manifest.__globals__["WEIGHTS_DIR"]
    stage = {"name": "s0", "file": str(weights / "yolox_nano.onnx"), "inputs": ["images"], "outputs": ["output"]}
    head = {"name": "e0", "after_stage": 0, "file": str(weights / "yolox_nano.onnx"), "inputs": ["output"], "output": "output"}
    exits = [head | {"name": f"e{i}", "output": f"out{i}"} for i in range(15)]
    assert len(load_manifest(manifest(tmp_path, stages=[stage], exits=exits)).exits) == 15  # 16 parts: fits
    with pytest.raises(ConfigError, match=r"1 stages and 16 exit heads: a frame's detections carry the stamps of at most 16 parts"):
        load_manifest(manifest(tmp_path, stages=[stage], exits=exits + [head | {"name": "e15", "output": "out15"}]))
