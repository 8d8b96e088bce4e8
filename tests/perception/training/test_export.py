"""ONNX export of every stage and exit: the chained parts reproduce the original model."""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from perception.detection.manifest import load_manifest  # noqa: E402
from perception.detection.yolox import letterbox  # noqa: E402
from perception.training import chain, export  # noqa: E402
from perception.training.yolox_torch import EXITS_NPZ, ORIGINAL_ONNX, WEIGHTS_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return letterbox(cv2.imread(str(REPO / "tests" / "data" / "udacity_test1.jpg")), 416, 416)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    assert export.main(["--out", str(out), "--exits", str(EXITS_NPZ)]) == 0
    return out / export.MANIFEST_NAME


def test_export_writes_a_valid_manifest_with_one_file_per_part(exported):
    manifest = load_manifest(exported)
    assert [s.name for s in manifest.stages] == ["stage0", "stage1"]
    assert [(e.name, e.after_stage) for e in manifest.exits] == [("exit0", 0), ("exit1", 1)]
    assert [e.direct_file is not None for e in manifest.exits] == [False, True]  # the deepest exit in one graph
    assert all(f.is_file() and f.parent == exported.parent for f in manifest.files())
    assert manifest.anchor_count == 3549 and len(manifest.class_names()) == 80
    assert float(manifest.notes["exit0_relative_cost"]) < 1.0


@pytest.mark.parametrize("where", ["exported", "shipped"])
def test_chained_deepest_exit_equals_the_original(where, exported, image):
    manifest_path = exported if where == "exported" else WEIGHTS_DIR / export.MANIFEST_NAME
    diff, _ = export.full_depth_diff(manifest_path, ORIGINAL_ONNX, image)
    assert diff <= 1e-3


@pytest.mark.parametrize("where", ["exported", "shipped"])
def test_the_direct_graph_equals_the_chained_parts(where, exported, image):
    manifest_path = exported if where == "exported" else WEIGHTS_DIR / export.MANIFEST_NAME
    manifest = load_manifest(manifest_path)
    tensors, _ = chain.run_chain(manifest_path, image)
    direct = chain.ort_session(manifest.exits[-1].direct_file, 1).run(None, {"images": image})[0]
    np.testing.assert_array_equal(direct, tensors[manifest.exits[-1].output])


def test_every_exit_outputs_the_full_anchor_layout(image):
    tensors, _ = chain.run_chain(WEIGHTS_DIR / export.MANIFEST_NAME, image)
    for exit_ in load_manifest(WEIGHTS_DIR / export.MANIFEST_NAME).exits:
        assert tensors[exit_.output].shape == (1, 3549, 85)


def test_shipped_parts_stay_small():
    manifest = load_manifest(WEIGHTS_DIR / export.MANIFEST_NAME)
    assert sum(f.stat().st_size for f in manifest.files()) < 8 * 2**20


@pytest.mark.parametrize("where", ["exported", "shipped"])
def test_parts_take_the_smaller_input_a_wide_frame_is_fitted_to(where, exported):
    manifest_path = exported if where == "exported" else WEIGHTS_DIR / export.MANIFEST_NAME
    manifest = load_manifest(manifest_path)
    frame = cv2.imread(str(REPO / "tests" / "data" / "udacity_test1.jpg"))
    tensors, _ = chain.run_chain(manifest_path, letterbox(frame, 416, 416, input_size=(416, 256))[0])
    assert manifest.input.fit_aspect
    for exit_ in manifest.exits:
        assert tensors[exit_.output].shape == (1, manifest.dimensions(416, 256)["anchors"], 85)


def test_a_head_reading_features_a_later_stage_also_read_merges_too(tmp_path, image):
    """Exit 0 reads stage 0's features, which stage 1 read before it: merged after both, it still gets them."""
    from perception.training.direct import merge_parts

    names = ["stage0", "stage1", "exit0"]
    merge_parts([WEIGHTS_DIR / f"yolox_nano_{n}.onnx" for n in names], names, ["output_exit0"], tmp_path / "m.onnx")
    tensors, _ = chain.run_chain(WEIGHTS_DIR / export.MANIFEST_NAME, image)
    merged = chain.ort_session(tmp_path / "m.onnx", 1).run(None, {"images": image})[0]
    np.testing.assert_array_equal(merged, tensors["output_exit0"])


def _weights_copy(folder: Path) -> Path:
    for path in [*WEIGHTS_DIR.glob("yolox_nano*"), WEIGHTS_DIR / "coco_classes.txt"]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder / export.MANIFEST_NAME


@pytest.mark.parametrize("named_before", [True, False])
def test_export_direct_names_the_graph_only_once_it_is_checked(tmp_path, monkeypatch, capsys, named_before):
    """A failed run leaves the manifest and the graph it names as they were; a good one names the graph."""
    from perception.training import direct

    manifest = _weights_copy(tmp_path)
    graph = tmp_path / "yolox_nano_exits_exit1_direct.onnx"
    if not named_before:
        manifest.write_text(manifest.read_text().replace(f'"direct_file": "{graph.name}"', '"direct_file": null'))
        graph.unlink()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert export.main(["--direct", str(manifest), "--exit", "2"]) == 1
    assert "--exit 2: " in capsys.readouterr().err
    monkeypatch.setattr(direct, "DIRECT_TOLERANCE", -1.0)  # any merge then differs
    assert export.main(["--direct", str(manifest)]) == 1
    assert "the merged graph differs from the parts" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # nothing changed, nothing left
    assert export.main(["--direct", str(tmp_path / "yolox_nano.onnx")]) == 1  # a plain ONNX detector: one graph already
    assert "is not one" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    monkeypatch.undo()
    assert export.main(["--direct", str(manifest)]) == 0
    assert load_manifest(manifest).exits[1].direct_file == graph and graph.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, graph.name})
