"""The one detector builder: settings a model cannot honour are refused before anything loads, and a
setting that would change nothing on this model says so."""

import logging

import pytest

from perception.config import ConfigError
from perception.detection.builder import DetectorSettings, build_detector, check_settings
from perception.detection.manifest import WEIGHTS_DIR
from perception.detection.policies import PolicyConfig


def test_an_exit_the_model_does_not_have_is_refused_naming_the_ones_it_has():
    # Once run at the deepest exit and reported under the exit asked for (a sweep's rows mislabelled).
    with pytest.raises(ConfigError, match=r"policy.exit: 5, but yolox_nano_exits.json has 2 exit\(s\): 0 to 1"):
        check_settings(DetectorSettings(policy=PolicyConfig(kind="fixed", exit=5)))
    check_settings(DetectorSettings(policy=PolicyConfig(kind="fixed", exit=1)))
    check_settings(DetectorSettings(policy=PolicyConfig(kind="deadline", exit=5)))  # a policy that never reads it


@pytest.mark.parametrize("pixels, sizes, asked", [(16_777_216, [4.0, 1.0], 67_108_864), (1024, [1.0, 0.05], 51)])
def test_a_share_of_the_budget_outside_what_an_input_may_be_is_refused(pixels, sizes, asked):
    with pytest.raises(ConfigError, match=f"policy.sizes: .* asks for a {asked}-pixel input"):
        check_settings(DetectorSettings(pixels=pixels, policy=PolicyConfig(kind="deadline", sizes=sizes)))
    # The fixed policy never asks for the smaller share, and a model of one input size never runs any
    # budget: the same settings are fine there.
    check_settings(DetectorSettings(pixels=pixels, policy=PolicyConfig(kind="fixed", sizes=sizes)))
    check_settings(DetectorSettings(model=WEIGHTS_DIR / "yolox_nano.json", pixels=pixels,
                                    policy=PolicyConfig(kind="deadline", sizes=sizes)))


def test_a_pixel_budget_on_a_model_of_one_input_size_is_said_to_change_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="perception.detection.builder"):
        build_detector(DetectorSettings(model=WEIGHTS_DIR / "yolox_nano.json", pixels=43_264,
                                        policy=PolicyConfig(kind="fixed")))
    assert "yolox_nano.json runs at one input size on this engine (416x416): pixels changes nothing" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perception.detection.builder"):  # the shipped default sizes
        build_detector(DetectorSettings(model=WEIGHTS_DIR / "yolox_nano.json", policy=PolicyConfig(kind="deadline")))
    assert "one input size" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="perception.detection.builder"):
        build_detector(DetectorSettings(pixels=43_264, policy=PolicyConfig(kind="fixed")))  # a fitted model
    assert "one input size" not in caplog.text
