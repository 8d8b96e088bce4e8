from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from perception.config import ConfigError, load_config


@dataclass(frozen=True)
class Inner:
    fps: float = 30.0
    path: Path | None = None


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    mode: Literal["fast", "safe"] = "safe"
    rate: Literal["source", "max"] | float = "source"
    sizes: list[int] = field(default_factory=list)
    enabled: bool = True

    def __post_init__(self):
        if self.inner.fps > 1000:
            raise ValueError("fps above 1000 is not a camera")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_valid_config_becomes_typed_objects_with_paths_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path, "name: a\ninner: {fps: 25, path: clips/x.mp4}\nrate: 12\nsizes: [1, 2]\n"), Outer)
    assert config == Outer(name="a", inner=Inner(fps=25.0, path=tmp_path / "clips/x.mp4"), rate=12.0, sizes=[1, 2])
    assert isinstance(config.inner.fps, float)


def test_misspelled_key_is_an_error_naming_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "name: a\ninner: {fsp: 25}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, Outer)
    assert str(error.value) == f"{path}: inner.fsp: unknown key (did you mean 'fps'?)"


@pytest.mark.parametrize(
    "text, message",
    [
        ("inner: {}\n", "name: required key is missing"),
        ("name: 3\n", "name: expected a string, got int 3"),
        ("name: a\ninner: {fps: fast}\n", "inner.fps: expected a number, got str 'fast'"),
        ("name: a\nmode: turbo\n", "mode: must be one of 'fast', 'safe', got 'turbo'"),
        ("name: a\nenabled: 1\n", "enabled: expected true or false, got int 1"),
        ("name: a\nsizes: [1, x]\n", "sizes[1]: expected an integer, got str 'x'"),
        ("name: a\ninner: 5\n", "inner: expected a mapping, got int 5"),
        ("name: a\ninner: {fps: 5000}\n", "<top level>: fps above 1000 is not a camera"),
        ("name: a\nrate: -x\n", "rate: must be one of 'source', 'max', got '-x' or expected a number"),
        ("- a\n- b\n", "top level must be a mapping, got list"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text), Outer)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)


def test_overrides_are_typed_and_validated_like_the_file(tmp_path):
    path = write(tmp_path, "name: a\n")
    assert load_config(path, Outer, ["inner.fps=12.5", "mode=fast"]).inner.fps == 12.5
    with pytest.raises(ConfigError, match="inner.fpx: unknown key"):
        load_config(path, Outer, ["inner.fpx=1"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(path, Outer, ["inner.fps"])
