"""The staged network: each part's graph checked at load against its manifest; inputs sized by a pixel budget."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from perception.config import ConfigError
from perception.detection.network import StagedNetwork
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.engines import EngineConfig, create_engine
from perception.engines.onnxruntime_engine import OnnxRuntimeEngine

DATA = Path(__file__).resolve().parents[2] / "data"


def test_a_part_whose_graph_gives_other_tensors_is_named_at_load():
    """The one-stage manifest's 'full' part pointed at stage0's file: same input, other outputs."""
    manifest = load_manifest("yolox_nano.json")
    wrong = WEIGHTS_DIR / "yolox_nano_stage0.onnx"
    manifest = dataclasses.replace(manifest, stages=[dataclasses.replace(manifest.stages[0], file=wrong)])
    with pytest.raises(ConfigError) as error:
        StagedNetwork(manifest, create_engine(EngineConfig(threads=1)))
    assert str(error.value) == (f"model file {wrong} does not match part full of its manifest: expected inputs "
                                "[images] -> outputs [output], found inputs [images] -> outputs [dark3, dark4]")


def test_the_bundled_manifests_match_their_graphs():
    engine = create_engine(EngineConfig(threads=1))
    for name in ("yolox_nano.json", "yolox_nano_exits.json"):
        StagedNetwork(load_manifest(name), engine).close()


def test_the_bundled_direct_graph_gives_exactly_what_the_parts_give_at_every_size():
    """One call instead of three: the same operators, so the same numbers, or replays would differ."""
    network = StagedNetwork(load_manifest("yolox_nano_exits.json"), create_engine(EngineConfig(threads=2)))
    frame = cv2.imread(str(DATA / "udacity_test1.jpg"))
    assert network.has_direct(1) and not network.has_direct(0)
    for pixels in (None, 86_528, 416 * 416 * 2):
        parts = network.begin(frame, pixels)
        network.run_stages(parts, 1)  # nothing can run directly once a stage has run
        direct = network.begin(frame, pixels)
        np.testing.assert_array_equal(network.run_exit(direct, 1), network.run_exit(parts, 1))
        assert [t[0] for t in direct.timings] == ["preprocess", "exit1.direct"]
        assert [t[0] for t in parts.timings] == ["preprocess", "stage0", "stage1", "exit1"]
    network.close()


def _cars(detector: StagedNetwork, frame: np.ndarray, pixels: int | None = None) -> tuple[tuple[int, int], np.ndarray]:
    outcome = detector.detect(frame, pixels=pixels)
    names = detector.manifest.class_names()
    cars = np.array(sorted(b.tolist() for b, c in zip(outcome.boxes, outcome.class_ids) if names[c] == "car"))
    return outcome.inference.tensors["images"].shape[2:], cars


def test_a_wide_frame_runs_at_its_own_aspect_and_finds_what_the_square_input_finds():
    """1280x720 in a 416x416 input leaves 182 rows of padding; under the same pixel budget it runs at
    512x288, and at 416x256 (the same scale as the square) under 256x416's budget."""
    frame = cv2.imread(str(DATA / "udacity_test1.jpg"))
    manifest = load_manifest("yolox_nano_exits.json")
    network = StagedNetwork(manifest, create_engine(EngineConfig(threads=2)))
    budget_shape, budgeted = _cars(network, frame)
    same_scale_shape, same_scale = _cars(network, frame, pixels=416 * 256)
    square = dataclasses.replace(manifest, input=dataclasses.replace(manifest.input, fit_aspect=False))
    square_shape, reference = _cars(StagedNetwork(square, create_engine(EngineConfig(threads=2))), frame)
    assert (budget_shape, same_scale_shape, square_shape) == ((288, 512), (256, 416), (416, 416))
    assert len(same_scale) == len(reference) == 2
    np.testing.assert_allclose(same_scale, reference, atol=2.0)  # pixels of a 1280x720 frame
    # At 0.4 instead of 0.325 the network sees more: the same two cars, and a small far one besides.
    assert len(budgeted) >= 2 and all(np.abs(budgeted - car).max(axis=1).min() <= 8.0 for car in reference)


def test_an_engine_built_for_one_shape_gets_the_full_input_pinned():
    class OneShape(OnnxRuntimeEngine):
        any_input_size = False

    detector = StagedNetwork(load_manifest("yolox_nano_exits.json"), OneShape(EngineConfig(threads=1)))
    frame = cv2.imread(str(DATA / "udacity_test1.jpg"))
    assert not detector.fits_aspect and detector.begin(frame).tensors["images"].shape == (1, 3, 416, 416)
    assert detector._stages[0].input_shapes["images"] == (1, 3, 416, 416)


def test_fitting_graphs_of_a_fixed_size_is_refused_at_load():
    manifest = load_manifest("yolox_nano.json")  # the original network: a fixed 416x416 graph
    manifest = dataclasses.replace(manifest, input=dataclasses.replace(manifest.input, fit_aspect=True))
    with pytest.raises(ConfigError, match=r"^model file .*yolox_nano\.onnx \(part full\) has inputs of fixed size "
                                          r"\{'images': \[1, 3, 416, 416\]\}, but its manifest's input.fit_aspect"):
        StagedNetwork(manifest, create_engine(EngineConfig(threads=1)))
