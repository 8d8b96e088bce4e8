"""The one codec of every message type (perception.messages), for the wire and for recordings,
derived from the dataclasses' field types: compact JSON `{"wire": N, "type": ..., fields}`, enums by
name, arrays as base64 of their little-endian bytes, every field validated at decode (MessageError
with a one-line reason); and the JSON schema a recording's channels declare, from the same fields."""

from __future__ import annotations

import binascii
import dataclasses
import enum
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from perception.messages import (
    MAX_COUNTERS, MAX_DETECTIONS, MAX_LIST_ITEMS, MAX_MESSAGE_BYTES, MAX_STAMPS, MESSAGE_TYPES, WIRE_VERSION, Message,
    MessageError, Stamp,
)

# --- the codec: one per message type, derived from the dataclass above ----------------------
#
# Each message is one JSON object: {"wire": 6, "type": "Decision", <every field>}. Enums travel as
# their names, arrays as base64 of their little-endian bytes, nested records (stamps, a target) as
# objects, an infinite time to collision as null. The same bytes are what a recording stores, with
# the JSON schema below (perception.recording), so Foxglove decodes every channel as it is.


@dataclass(frozen=True, eq=False)  # hashed by identity: a record's codecs key their name set
class _FieldCodec:
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    schema: dict


def _expect(value: Any, kinds: type | tuple[type, ...], what: str) -> Any:
    # bool is an int in Python, never in a message
    if not isinstance(value, kinds) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise MessageError(f"{what} must be {expected}, got {type(value).__name__}")
    return value


def _int_codec(what: str) -> tuple[Callable, Callable, dict]:
    return int, lambda v: _expect(v, int, what), {"type": "integer"}


def _float_codec(what: str, inf_as_null: bool) -> tuple[Callable, Callable, dict]:
    if inf_as_null:
        def encode_value(v: float) -> float | None:
            return None if v == math.inf else float(v)

        def decode_value(v: Any) -> float:
            return math.inf if v is None else float(_expect(v, (int, float), what))
        return encode_value, decode_value, {"type": ["number", "null"], "description": "null: infinite"}
    return float, lambda v: float(_expect(v, (int, float), what)), {"type": "number"}


def _str_codec(what: str) -> tuple[Callable, Callable, dict]:
    return str, lambda v: _expect(v, str, what), {"type": "string"}


def _enum_codec(enum_type: type[enum.IntEnum], what: str) -> tuple[Callable, Callable, dict]:
    def decode_value(v: Any) -> enum.IntEnum:
        try:
            return enum_type[_expect(v, str, what)]
        except KeyError:
            raise MessageError(f"{what} {v[:32]!r} is not a valid {enum_type.__name__}") from None
    return (lambda v: enum_type(v).name), decode_value, {"type": "string", "enum": [m.name for m in enum_type]}


def _array_codec(metadata: Mapping, what: str) -> tuple[Callable, Callable, dict]:
    dtype, width = np.dtype(metadata["dtype"]), metadata["width"]
    row_bytes = dtype.itemsize * (width or 1)
    native = dtype.newbyteorder("=")

    def encode_value(v: np.ndarray) -> str:
        return binascii.b2a_base64(np.ascontiguousarray(v, dtype=dtype).tobytes(), newline=False).decode("ascii")

    def decode_value(v: Any) -> np.ndarray:
        try:
            raw = binascii.a2b_base64(_expect(v, str, what), strict_mode=True)
        except (binascii.Error, ValueError):  # ValueError: a non-ASCII string
            raise MessageError(f"{what} is not base64") from None
        if len(raw) % row_bytes:
            raise MessageError(f"{what}: {len(raw)} bytes are not whole rows of {row_bytes}")
        rows = len(raw) // row_bytes
        if rows > MAX_DETECTIONS:
            raise MessageError(f"{what}: {rows} rows exceed the limit of {MAX_DETECTIONS}")
        array = np.frombuffer(raw, dtype).astype(native)
        return array.reshape((rows, width) if width else (rows,))
    shape = f"(n, {width})" if width else "(n,)"
    schema = {"type": "string", "contentEncoding": "base64",
              "description": f"{metadata['description']}: {shape} little-endian {dtype.name}"}
    return encode_value, decode_value, schema


def _record_codec(record_type: type, what: str) -> tuple[Callable, Callable, dict]:
    codecs = _field_codecs(record_type)

    def encode_value(v: Any) -> dict:
        return {c.name: c.encode(getattr(v, c.name)) for c in codecs}

    def decode_value(v: Any) -> Any:
        return record_type(**_decode_fields(codecs, _expect(v, dict, what), what))
    return encode_value, decode_value, _object_schema(record_type.__name__, codecs)


def _optional_codec(inner: tuple[Callable, Callable, dict]) -> tuple[Callable, Callable, dict]:
    encode_inner, decode_inner, schema = inner
    return ((lambda v: None if v is None else encode_inner(v)), (lambda v: None if v is None else decode_inner(v)),
            {"anyOf": [schema, {"type": "null"}]})


def _tuple_codec(inner: tuple[Callable, Callable, dict], limit: int, what: str) -> tuple[Callable, Callable, dict]:
    encode_inner, decode_inner, schema = inner

    def decode_value(v: Any) -> tuple:
        if len(_expect(v, list, what)) > limit:
            raise MessageError(f"{what}: {len(v)} items exceed the limit of {limit}")
        return tuple(decode_inner(item) for item in v)
    return (lambda v: [encode_inner(item) for item in v]), decode_value, {"type": "array", "items": schema}


def _stamps_codec(what: str) -> tuple[Callable, Callable, dict]:
    # [stage, t_ns] pairs, not objects: a decision carries up to 28, and this is its hot path.
    def decode_value(v: Any) -> tuple[Stamp, ...]:
        if len(_expect(v, list, what)) > MAX_STAMPS:
            raise MessageError(f"{what}: {len(v)} stamps exceed the limit of {MAX_STAMPS}")
        try:
            stamps = tuple(Stamp(stage, t_ns) for stage, t_ns in v)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"{what}: each stamp must be [stage, t_ns] ({exc})") from None
        if any(type(s.t_ns) is not int for s in stamps):
            raise MessageError(f"{what}: a stamp's time is not an integer")
        return stamps
    schema = {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                         "prefixItems": [{"type": "string"}, {"type": "integer"}]},
              "description": "[stage, t_ns] per hop since capture"}
    return (lambda v: [[s.stage, s.t_ns] for s in v]), decode_value, schema


def _counters_codec(what: str) -> tuple[Callable, Callable, dict]:
    def decode_value(v: Any) -> dict[str, int]:
        if len(_expect(v, dict, what)) > MAX_COUNTERS:
            raise MessageError(f"{what}: {len(v)} counters exceed the limit of {MAX_COUNTERS}")
        return {name: _expect(count, int, f"counter {name[:32]!r}") for name, count in v.items()}
    return dict, decode_value, {"type": "object", "additionalProperties": {"type": "integer"}}


def _codec_for(hint: Any, metadata: Mapping, what: str) -> tuple[Callable, Callable, dict]:
    """(encode, decode, JSON schema) of one field, from its type hint."""
    if "dtype" in metadata:
        codec = _array_codec(metadata, what)
        return _optional_codec(codec) if metadata.get("optional") else codec
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _optional_codec(_codec_for(inner, metadata, what))
    if origin is tuple and args[0] is Stamp:
        return _stamps_codec(what)
    if origin is tuple:
        return _tuple_codec(_codec_for(args[0], {}, what), MAX_LIST_ITEMS, what)
    if origin is dict:
        return _counters_codec(what)
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return _enum_codec(hint, what)
    if dataclasses.is_dataclass(hint):
        return _record_codec(hint, what)
    if hint is int:
        return _int_codec(what)
    if hint is float:
        return _float_codec(what, bool(metadata.get("inf_as_null")))
    if hint is str:
        return _str_codec(what)
    raise TypeError(f"no codec for {what}: {hint!r}")


def _field_codecs(record_type: type) -> tuple[_FieldCodec, ...]:
    hints = typing.get_type_hints(record_type)
    codecs = []
    for f in dataclasses.fields(record_type):
        metadata = {**f.metadata, "optional": f.default is None}
        encode_value, decode_value, schema = _codec_for(hints[f.name], metadata, f"{record_type.__name__}.{f.name}")
        codecs.append(_FieldCodec(f.name, encode_value, decode_value, schema))
    _NAMES[tuple(codecs)] = {c.name for c in codecs}
    return tuple(codecs)


_NAMES: dict[tuple[_FieldCodec, ...], set[str]] = {}


def _decode_fields(codecs: tuple[_FieldCodec, ...], data: dict, what: str) -> dict:
    if data.keys() != _NAMES[codecs]:
        names = [c.name for c in codecs]
        missing, unknown = [n for n in names if n not in data], [k[:32] for k in data if k not in names]
        raise MessageError(f"{what}: " + "; ".join(
            part for part in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if part))
    return {c.name: c.decode(data[c.name]) for c in codecs}


def _object_schema(title: str, codecs: tuple[_FieldCodec, ...], extra: dict | None = None) -> dict:
    properties = {**(extra or {}), **{c.name: c.schema for c in codecs}}
    return {"title": title, "type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


_BY_NAME = {t.__name__: t for t in MESSAGE_TYPES}
_CODECS = {t: _field_codecs(t) for t in MESSAGE_TYPES}
_JSON = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps builds one per call given options


def compact_json(value: object) -> bytes:
    """`value` as compact JSON (no spaces), UTF-8: the wire's and the recordings' JSON."""
    return _JSON.encode(value).encode()


def schema_name(message_type: type[Message]) -> str:
    return f"perception.{message_type.__name__}"


def json_schema(message_type: type[Message]) -> dict:
    """The JSON schema of a message type's encoding (what a recording's channel declares)."""
    envelope = {"wire": {"const": WIRE_VERSION}, "type": {"const": message_type.__name__}}
    return _object_schema(schema_name(message_type), _CODECS[message_type], envelope)


def encode(message: Message) -> bytes:
    """A message as its wire (and recording) bytes: compact UTF-8 JSON."""
    if len(message.stamps) > MAX_STAMPS:
        raise ValueError(f"{len(message.stamps)} stamps exceed the limit of {MAX_STAMPS}")
    data = {"wire": WIRE_VERSION, "type": type(message).__name__}
    for codec in _CODECS[type(message)]:
        data[codec.name] = codec.encode(getattr(message, codec.name))
    return compact_json(data)


# Wire formats this build can read recordings of, by upgrading them (perception migrate); the wire
# itself takes the current one only.
UPGRADABLE_WIRE_VERSIONS = (4, 5)


def upgrade(data: bytes) -> bytes:
    """A message of an older wire format as the current one: format 4 lacks `clock` (5 added it: the
    host whose clock its stamps are in), which is this host's, "local", for a recording of one host;
    detections before format 6 lack `measured_by` (the network pass), which is not known: null.
    Bytes of the current format come back as they are; MessageError for anything else."""
    try:
        parsed = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"message: not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(parsed, dict) or parsed.get("wire") == WIRE_VERSION:
        return bytes(data)
    if parsed.get("wire") not in UPGRADABLE_WIRE_VERSIONS:
        raise MessageError(f"message: wire version {str(parsed.get('wire'))[:16]}, which no upgrade reads")
    parsed["wire"] = WIRE_VERSION
    parsed.setdefault("clock", "local")
    if parsed.get("type") == "Detections":
        parsed.setdefault("measured_by", None)
    return compact_json(parsed)


def decode(data: bytes | memoryview, expect: type[Message] | None = None) -> Message:
    """Parse wire bytes; raises MessageError naming what is wrong. `expect` pins the type."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message: {len(data)} bytes exceed the limit of {MAX_MESSAGE_BYTES}")
    try:
        parsed = json.loads(bytes(data))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MessageError(f"message: not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(parsed, dict):
        raise MessageError(f"message: a JSON {type(parsed).__name__}, not an object")
    version, type_name = parsed.pop("wire", None), parsed.pop("type", None)
    if version != WIRE_VERSION:
        raise MessageError(f"message: wire version {str(version)[:16]}, this build speaks {WIRE_VERSION}")
    message_type = _BY_NAME.get(type_name) if isinstance(type_name, str) else None
    if message_type is None:
        raise MessageError(f"message: unknown type {str(type_name)[:32]!r}")
    if expect is not None and message_type is not expect:
        raise MessageError(f"message: got {message_type.__name__}, expected {expect.__name__}")
    try:
        return message_type(**_decode_fields(_CODECS[message_type], parsed, message_type.__name__))
    except MessageError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise MessageError(f"{message_type.__name__}: {exc}") from None
