"""`perception evaluate`'s flags: overrides of the detector config's keys, refused in one line as the
config's keys are, and no flag overrides a key it was not given."""

import pytest

import perception.detection.builder as builder
from perception.cli import main


class Built(Exception):
    """Raised by the patched builder: the settings evaluate would run, without running them."""


@pytest.fixture
def settings_built(monkeypatch):
    def capture(settings, *args, **kwargs):
        raise Built(settings)

    monkeypatch.setattr(builder, "build_detector", capture)

    def run(*argv: str):
        with pytest.raises(Built) as built:
            main(["evaluate", *argv])
        return built.value.args[0]

    return run


def test_a_key_no_flag_sets_keeps_the_configs_value(settings_built):
    assert settings_built("--detector", "engine.threads=1").engine.threads == 1
    assert settings_built("--detector", "engine.threads=1", "--threads", "3").engine.threads == 3
    settings = settings_built("--policy", "fixed", "--exit", "0", "--pixels", "43264")
    assert (settings.policy.kind, settings.policy.exit, settings.pixels) == ("fixed", 0, 43_264)
    assert settings_built("--interval", "3").policy.kind == "interval"


@pytest.mark.parametrize("argv, line", [
    (["--pixels", "100"], "pixels: must be in [1024, 16777216], got 100"),
    (["--policy", "fixed", "--exit", "99"], "policy.exit: must be in [-1, 63], got 99"),
    (["--interval", "0"], "policy.interval: must be in [1, 30], got 0"),
    (["--policy", "adaptive", "--interval", "3"], "--interval runs the interval policy: it cannot go with --policy adaptive"),
    (["--exit", "0"], "--exit applies to the fixed and interval policies, not deadline"),
])
def test_an_impossible_flag_is_one_line_naming_it(argv, line, capsys):
    assert main(["evaluate", *argv, "--video", "/nonexistent.avi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0]
