"""YAML configuration validated into typed, frozen dataclasses at start-up.

An unknown or misspelled key, a wrong type, a missing required key or a number out of its range is
a ConfigError whose one-line message names the file and the key path. Every number is finite (YAML's
`.nan` and `.inf` are refused) and every number of a config states its range in its type
(`Annotated[float, Range(...)]`, or one of the aliases below), so `min_score: 1.5` or
`heartbeat_timeout_ms: .inf` cannot switch a safety rule off. The launcher and the node validate
with this same code. Relative paths (fields typed `Path`) are resolved against the directory of the
file that holds them, so a config means the same thing whatever the working directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names file and key."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The interval a config number must lie in: `Annotated[float, Range(0, 1)]`. Bounds are
    inclusive unless marked open; None is unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """Why `value` is outside the range, or None."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self}, got {value!r}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self}, got {value!r}" if too_low or too_high else None

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    """1000000 rather than 1e+06, 0.5 as 0.5."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Length:
    """How many items a config list (or mapping, or string) may hold: `Annotated[list[str], Length(1)]`."""

    low: int = 0
    high: int | None = None

    def problem(self, value: Any) -> str | None:
        if len(value) < self.low or (self.high is not None and len(value) > self.high):
            bound = f"at least {self.low}" if self.high is None else f"{self.low} to {self.high}"
            return f"needs {bound} item(s), got {len(value)}"
        return None


# The ranges most config numbers need, by name.
Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1)]  # scores, shares, fractions of the image
ScoreThreshold = Annotated[float, Range(0, 1, high_open=True)]  # what a detection must score: 1 would pass none
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
Port = Annotated[int, Range(1, 65535)]


def load_yaml(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None


def load_config(path: str | Path, cls: type[T], overrides: typing.Sequence[str] = ()) -> T:
    """Load `path` into `cls`, applying `key.path=value` overrides (values parsed as YAML)."""
    path = Path(path)
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for override in overrides:
        apply_override(data, override, path)
    return from_mapping(cls, data, source=str(path), base_dir=path.parent)


def parse_override(override: str, source: Path | str = "--set") -> tuple[str, Any]:
    """'a.b.c=value' -> ('a.b.c', value parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: override {override!r} must look like key.path=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"{source}: override {override!r}: value is not valid YAML") from None


def command_line_overrides(items: list[str], flag: str, config_type: type) -> dict[str, Any]:
    """`KEY=VALUE` items of a command-line `flag` as {dotted key: value}; a relative path given for
    a Path setting of `config_type` is made absolute against the working directory, where the user
    typed it (a config file's own paths resolve against the file's folder)."""
    overrides = {}
    for item in items:
        key, value = parse_override(item, flag)
        if isinstance(value, str) and value and _is_path_setting(config_type, key.split(".")):
            value = str((Path.cwd() / Path(value).expanduser()).resolve())
        overrides[key] = value
    return overrides


def _is_path_setting(tp: Any, keys: list[str]) -> bool:
    """Whether dotted key `keys` of dataclass `tp` is a Path (or an optional Path) setting."""
    while get_origin(tp) is Annotated or get_origin(tp) in (Union, types.UnionType):
        tp = get_args(tp)[0] if get_origin(tp) is Annotated else next((a for a in get_args(tp) if a is not type(None)), None)
    if not keys:
        return tp is Path
    if not dataclasses.is_dataclass(tp):
        return False
    hints = get_type_hints(tp, include_extras=True)
    return keys[0] in hints and _is_path_setting(hints[keys[0]], keys[1:])


def apply_override(data: dict, override: str, source: Path | str = "--set") -> None:
    """Set a dotted key in a nested mapping from 'a.b.c=value'."""
    set_key(data, *parse_override(override, source), source=source)


def set_key(data: dict, key: str, value: Any, source: Path | str = "--set") -> None:
    """Set the dotted `key` ('a.b.c') of a nested mapping to `value`, as it is (no re-parsing)."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)  # the caller's value stays its own


def from_mapping(cls: type[T], data: Any, source: str = "<config>", base_dir: Path | None = None, key: str = "") -> T:
    """Validate a mapping (parsed YAML) into the dataclass `cls`."""
    return _convert(cls, data, _Where(source, base_dir or Path.cwd()), key)


@dataclasses.dataclass(frozen=True)
class _Where:
    source: str
    base_dir: Path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key or '<top level>'}: {message}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


def _convert(tp: Any, value: Any, where: _Where, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *constraints = get_args(tp)
        converted = _convert(base, value, where, key)
        for constraint in constraints:
            problem = constraint.problem(converted) if isinstance(constraint, (Range, Length)) else None
            if problem:
                raise where.error(key, problem)
        return converted
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, key)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where, key)
            except ConfigError as exc:
                errors.append(str(exc).rsplit(": ", 1)[-1])
        raise where.error(key, " or ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise where.error(key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin in (list, tuple):
        args = get_args(tp)
        if not isinstance(value, list):
            raise where.error(key, f"expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise where.error(key, f"expected a list of {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_type, value_type = get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise where.error(key, f"expected a mapping, got {_describe(value)}")
        return {_convert(key_type, k, where, key): _convert(value_type, v, where, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        names = [m.name.lower() for m in tp]
        if isinstance(value, str) and value.lower() in names:
            return tp[value.upper()]
        raise where.error(key, f"must be one of {', '.join(names)}, got {value!r}")
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise where.error(key, f"expected a path, got {_describe(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (where.base_dir / path).resolve()
    if tp is bool:
        if not isinstance(value, bool):
            raise where.error(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise where.error(key, f"expected a number, got {_describe(value)}")
        if isinstance(value, float) and not math.isfinite(value) or isinstance(value, int) and abs(value) > 2**53:
            raise where.error(key, f"expected a finite number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise where.error(key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"config type {tp!r} at {key} is not supported")


def _convert_dataclass(cls: type, value: Any, where: _Where, key: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise where.error(key, f"expected a mapping, got {_describe(value)}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    moved: dict[str, str] = getattr(cls, "MOVED_KEYS", {})  # keys a later version keeps elsewhere
    for name in value:
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(fields)})"
            if name in moved:
                hint = f" (it is {moved[name]} now)"
            raise where.error(_join(key, name), f"unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], where, _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.error(_join(key, name), "required key is missing")
    try:
        instance = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise where.error(key, str(exc)) from None
    return instance


def check_ranges(instance: Any) -> None:
    """The Range and Length constraints of a dataclass built in code rather than from a config
    (from_mapping checks them as it converts); ValueError naming the first field out of range."""
    for name, hint in get_type_hints(type(instance), include_extras=True).items():
        problem = _problem(hint, getattr(instance, name, None))
        if problem:
            raise ValueError(f"{name} {problem}")


def _problem(hint: Any, value: Any) -> str | None:
    """What is wrong with `value` under the Range / Length constraints of `hint` (through unions, by
    the option the value is of, and into the items of lists, tuples and mappings)."""
    origin = get_origin(hint)
    if origin is Annotated:
        base, *constraints = get_args(hint)
        if not _is_of(base, value):
            return None
        own = next((p for c in constraints if isinstance(c, (Range, Length)) and (p := c.problem(value))), None)
        return own or _problem(base, value)
    if origin in (Union, types.UnionType):
        return next((p for option in get_args(hint) if _is_of(option, value) and (p := _problem(option, value))), None)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = [a for a in get_args(hint) if a is not Ellipsis]
        items = args * len(value) if len(args) == 1 else args
        return next((f"[{i}] {p}" for i, (a, v) in enumerate(zip(items, value)) if (p := _problem(a, v))), None)
    if origin is dict and isinstance(value, dict):
        value_hint = get_args(hint)[1] if get_args(hint) else Any
        return next((f"[{k!r}] {p}" for k, v in value.items() if (p := _problem(value_hint, v))), None)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    return None


def _is_of(hint: Any, value: Any) -> bool:
    """Whether `value` is of the (possibly annotated) type `hint`, as far as its constraints go."""
    origin = get_origin(hint)
    if origin is Annotated:
        return _is_of(get_args(hint)[0], value)
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, dict):
        return isinstance(value, origin)
    if origin is Literal:
        return value in get_args(hint)
    return isinstance(hint, type) and isinstance(value, hint)


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)
