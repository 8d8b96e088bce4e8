"""The adaptive detector checks at load that each part's graph matches what its manifest declares."""

import dataclasses

import pytest

from perception.config import ConfigError
from perception.detection.adaptive import AdaptiveDetector
from perception.detection.manifest import WEIGHTS_DIR, load_manifest
from perception.engines import EngineConfig, create_engine


def test_a_part_whose_graph_gives_other_tensors_is_named_at_load():
    """The one-stage manifest's 'full' part pointed at stage0's file: same input, other outputs."""
    manifest = load_manifest("yolox_nano.json")
    wrong = WEIGHTS_DIR / "yolox_nano_stage0.onnx"
    manifest = dataclasses.replace(manifest, stages=[dataclasses.replace(manifest.stages[0], file=wrong)])
    with pytest.raises(ConfigError) as error:
        AdaptiveDetector(manifest, create_engine(EngineConfig(threads=1)))
    assert str(error.value) == (f"model file {wrong} does not match part full of its manifest: expected inputs "
                                "[images] -> outputs [output], found inputs [images] -> outputs [dark3, dark4]")


def test_the_bundled_manifests_match_their_graphs():
    engine = create_engine(EngineConfig(threads=1))
    for name in ("yolox_nano.json", "yolox_nano_exits.json"):
        AdaptiveDetector(load_manifest(name), engine).close()
