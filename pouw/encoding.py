"""Canonical msgpack encoding of frozen dataclasses.

A dataclass encodes as a msgpack array of its field values in declaration
order; nested dataclasses nest as arrays. Decoding is strict: the array must
have exactly one element per field, every value must have the annotated type,
and fixed-length byte strings must have their length. The same object always
gives the same bytes, so `sha256(encode(x))` is an id.

Supported field types: `int` (unsigned 64-bit unless annotated `Signed`),
`bool`, `float` (finite only), `str`, `bytes`, `Annotated[bytes, Fixed(n)]`,
`Annotated[bytes | str, MaxLen(n)]`, `tuple[T, ...]` (with optional
`MaxLen`), `T | None`, nested dataclasses, and unions of dataclasses that
each carry a distinct `TAG: ClassVar[int]` (encoded as `[tag, fields]`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import types
import typing
from functools import lru_cache
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import msgpack

T = TypeVar("T")

UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Upper bound on any single decoded message; callers may pass a smaller one.
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


class DecodeError(ValueError):
    """Bytes that are not the canonical encoding of the expected type."""


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Annotation: a byte string of exactly `length` bytes."""

    length: int


@dataclasses.dataclass(frozen=True)
class MaxLen:
    """Annotation: a byte string, string or tuple of at most `length` items."""

    length: int


@dataclasses.dataclass(frozen=True)
class Signed:
    """Annotation: an int that may be negative (signed 64-bit)."""


Hash32 = Annotated[bytes, Fixed(32)]
"""A SHA-256 digest."""


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of `data`."""
    return hashlib.sha256(data).digest()


def encode(obj: Any) -> bytes:
    """Canonical bytes of a dataclass instance (or a plain supported value)."""
    return msgpack.packb(_to_plain(obj), use_bin_type=True)


def hash_of(obj: Any) -> bytes:
    """SHA-256 of the canonical encoding: the id of `obj`."""
    return sha256(encode(obj))


def decode(cls: type[T], data: bytes, max_size: int = DEFAULT_MAX_MESSAGE) -> T:
    """Decode `data` as `cls`, strictly; raises DecodeError with the reason."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes exceeds limit of {max_size}")
    try:
        plain = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_size,
            max_str_len=max_size,
            max_array_len=1 << 20,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise DecodeError("trailing bytes after message") from exc
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed msgpack: {exc}") from exc
    value = _from_plain(cls, plain, cls.__name__ if isinstance(cls, type) else "value")
    # Canonical form is unique: re-encoding must give the same bytes back.
    if encode(value) != bytes(data):
        raise DecodeError(f"non-canonical encoding of {getattr(cls, '__name__', cls)}")
    return value


def to_plain(obj: Any) -> Any:
    """The msgpack-ready nested lists/values of `obj` (for debugging and JSON views)."""
    return _to_plain(obj)


def _to_plain(obj: Any) -> Any:
    cls = type(obj)
    plan = _PLANS.get(cls)
    if plan is None:
        if cls in (int, str, bool, bytes) or obj is None:
            return obj
        if cls in (tuple, list):
            return [_to_plain(x) for x in obj]
        if cls is float:
            if not math.isfinite(obj):
                raise ValueError("non-finite float cannot be encoded")
            return obj
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            plan = _PLANS[cls] = (tuple(f.name for f in _fields(cls)), getattr(cls, "TAG", None) if _is_tagged(cls) else None)
        else:
            raise TypeError(f"cannot encode {cls.__name__}")
    names, tag = plan
    fields = [_to_plain(getattr(obj, n)) for n in names]
    return fields if tag is None else [tag, fields]


# dataclass -> (field names in order, type tag or None)
_PLANS: dict[type, tuple[tuple[str, ...], int | None]] = {}


@lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def _is_tagged(cls: type) -> bool:
    return "TAG" in getattr(cls, "__dict__", {}) or any(
        "TAG" in getattr(base, "__dict__", {}) for base in cls.__mro__[1:-1]
    )


def _from_plain(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        if base is int and any(isinstance(m, Signed) for m in meta):
            if isinstance(value, bool) or not isinstance(value, int):
                raise DecodeError(f"{where}: expected int, got {type(value).__name__}")
            if not (INT64_MIN <= value <= INT64_MAX):
                raise DecodeError(f"{where}: integer out of signed 64-bit range")
            return value
        out = _from_plain(base, value, where)
        for m in meta:
            if isinstance(m, Fixed) and len(out) != m.length:
                raise DecodeError(f"{where}: expected {m.length} bytes, got {len(out)}")
            if isinstance(m, MaxLen) and len(out) > m.length:
                raise DecodeError(f"{where}: length {len(out)} exceeds {m.length}")
        return out
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if type(None) in options:
            if value is None:
                return None
            rest = [o for o in options if o is not type(None)]
            inner = rest[0] if len(rest) == 1 else Union[tuple(rest)]
            return _from_plain(inner, value, where)
        return _from_tagged(options, value, where)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected array, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise DecodeError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_from_plain(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        if _is_tagged(tp):
            return _from_tagged((tp,), value, where)
        return _from_fields(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise DecodeError(f"{where}: expected bool, got {type(value).__name__}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(f"{where}: expected int, got {type(value).__name__}")
        if value < 0 or value > UINT64_MAX:
            raise DecodeError(f"{where}: integer out of unsigned 64-bit range")
        return value
    if tp is float:
        if not isinstance(value, float):
            raise DecodeError(f"{where}: expected float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise DecodeError(f"{where}: float must be finite")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise DecodeError(f"{where}: expected str, got {type(value).__name__}")
        return value
    if tp is bytes:
        if not isinstance(value, bytes):
            raise DecodeError(f"{where}: expected bytes, got {type(value).__name__}")
        return value
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def _from_fields(cls: type, value: Any, where: str) -> Any:
    fields = _fields(cls)
    if not isinstance(value, list):
        raise DecodeError(f"{where}: expected array of {len(fields)} fields, got {type(value).__name__}")
    if len(value) != len(fields):
        raise DecodeError(f"{where}: expected {len(fields)} fields, got {len(value)}")
    hints = _hints(cls)
    kwargs = {}
    for f, v in zip(fields, value):
        tp = hints[f.name]
        kwargs[f.name] = _from_plain(tp, v, f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise DecodeError(f"{where}: {exc}") from exc


def _from_tagged(options: tuple, value: Any, where: str) -> Any:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)):
        raise DecodeError(f"{where}: expected [tag, fields]")
    tag, body = value
    for cls in options:
        if getattr(cls, "TAG", None) == tag:
            return _from_fields(cls, body, f"{where}<{cls.__name__}>")
    raise DecodeError(f"{where}: unknown type tag {tag}")


__all__ = [
    "DecodeError",
    "Fixed",
    "MaxLen",
    "Signed",
    "Hash32",
    "sha256",
    "encode",
    "decode",
    "hash_of",
    "to_plain",
    "UINT64_MAX",
    "DEFAULT_MAX_MESSAGE",
]

_ = typing  # keep `typing` importable for forward references in annotations
