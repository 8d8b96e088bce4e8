"""ONNX export of every stage and exit: the chained parts reproduce the original model."""

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from perception.detection.manifest import load_manifest  # noqa: E402
from perception.detection.yolox import letterbox  # noqa: E402
from perception.training import export  # noqa: E402
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
    assert all(f.is_file() and f.parent == exported.parent for f in manifest.files())
    assert manifest.anchor_count == 3549 and len(manifest.class_names()) == 80
    assert float(manifest.notes["exit0_relative_cost"]) < 1.0


@pytest.mark.parametrize("where", ["exported", "shipped"])
def test_chained_deepest_exit_equals_the_original(where, exported, image):
    manifest_path = exported if where == "exported" else WEIGHTS_DIR / export.MANIFEST_NAME
    diff, _ = export.full_depth_diff(manifest_path, ORIGINAL_ONNX, image)
    assert diff <= 1e-3


def test_every_exit_outputs_the_full_anchor_layout(image):
    tensors, _ = export.run_chain(WEIGHTS_DIR / export.MANIFEST_NAME, image)
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
    tensors, _ = export.run_chain(manifest_path, letterbox(frame, 416, 416, input_size=(416, 256))[0])
    assert manifest.input.fit_aspect
    for exit_ in manifest.exits:
        assert tensors[exit_.output].shape == (1, manifest.dimensions(416, 256)["anchors"], 85)
