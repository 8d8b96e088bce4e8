import dataclasses
import importlib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest

from perception.config import ConfigError, Fraction, Length, NonNegativeInt, Positive, Range, load_config


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


@dataclass(frozen=True)
class Ranged:
    score: Fraction = 0.5
    timeout_ms: Annotated[float, Range(10, 10_000)] = 300.0
    retries: NonNegativeInt = 0
    classes: Annotated[list[str], Length(1)] = field(default_factory=lambda: ["car"])
    limit: Positive | None = None


@pytest.mark.parametrize("text, message", [
    ("score: 1.5", "score: must be in [0, 1], got 1.5"),
    ("timeout_ms: .inf", "timeout_ms: expected a finite number, got float inf"),
    ("timeout_ms: -.inf", "timeout_ms: expected a finite number, got float -inf"),
    ("score: .nan", "score: expected a finite number, got float nan"),
    ("timeout_ms: 5", "timeout_ms: must be in [10, 10000], got 5.0"),
    ("retries: -1", "retries: must be >= 0, got -1"),
    ("classes: []", "classes: needs at least 1 item(s), got 0"),
    ("limit: 0", "limit: must be > 0, got 0.0"),
    ("limit: .nan", "limit: expected a finite number, got float nan"),
    ("timeout_ms: 1.0e+400", "timeout_ms: expected a finite number, got float inf"),
    ("timeout_ms: 100000000000000000000000000", "timeout_ms: expected a finite number"),
])
def test_numbers_out_of_their_range_or_not_finite_are_one_line_errors(tmp_path, text, message):
    """Issue 16 items 2, 3, 8: `.nan`, `.inf` and impossible values used to pass and switch safety off."""
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_config(write(tmp_path, text), Ranged)
    assert "\n" not in str(caught.value) and str(tmp_path / "node.yaml") in str(caught.value)
    assert load_config(write(tmp_path, "limit: 2\nclasses: [car, bus]\n"), Ranged).limit == 2.0


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "launch.yaml"
    path.write_bytes(b"nodes:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 20 is b'\\xe9'\)"):
        load_config(path, Ranged)


def _numbers_without_a_range(tp, path: str, seen: set) -> list[str]:
    """Dotted paths of every int or float in a config type (through nested sections, lists, unions)
    that its type does not bound with a Range."""
    if dataclasses.is_dataclass(tp):
        if tp in seen:
            return []
        seen.add(tp)
        hints = typing.get_type_hints(tp, include_extras=True)
        return [p for f in dataclasses.fields(tp) if f.init
                for p in _numbers_without_a_range(hints[f.name], f"{tp.__name__}.{f.name}", seen)]
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *constraints = typing.get_args(tp)
        if base in (int, float):
            return [] if any(isinstance(c, Range) for c in constraints) else [path]
        return _numbers_without_a_range(base, path, seen)
    if origin is Literal:
        return []
    if tp in (int, float):
        return [path]
    return [p for arg in typing.get_args(tp) for p in _numbers_without_a_range(arg, path, seen)]


def test_every_number_of_every_node_config_and_the_launch_file_has_a_range():
    """Issue 16: one validation with ranges for every number, so no value can switch a safety rule off."""
    from perception.launch import LaunchFile

    nodes_dir = Path(__file__).resolve().parents[2] / "nodes"
    modules = [importlib.import_module(f"nodes.{p.stem}") for p in sorted(nodes_dir.glob("*.py")) if p.stem != "__init__"]
    seen: set = set()
    unbounded = [p for m in modules for p in _numbers_without_a_range(m.CONFIG, m.__name__, seen)]
    unbounded += _numbers_without_a_range(LaunchFile, "launch", seen)
    assert len(seen) > 15 and unbounded == []


def test_a_key_that_moved_says_where_it_is_now(tmp_path):
    from perception.detection.builder import DetectorSettings

    path = write(tmp_path, "policy:\n  kind: adaptive\n  adaptive:\n    sizes: [1.0, 0.5]\n")
    with pytest.raises(ConfigError, match=r"policy\.adaptive\.sizes: unknown key \(it is policy\.sizes now\)$"):
        load_config(path, DetectorSettings)
