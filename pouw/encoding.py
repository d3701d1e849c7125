"""Canonical msgpack encoding of frozen dataclasses.

A dataclass encodes as a msgpack array of its field values in declaration
order; nested dataclasses nest as arrays. Decoding is strict: the array must
have exactly one element per field, every value must have the annotated type,
and fixed-length byte strings must have their length. The same object always
gives the same bytes, so `sha256(encode(x))` is an id.

Decoding never materialises what the type does not allow: it reads the
msgpack headers in order against a reader compiled once per type, and
refuses a message at the first header of the wrong kind, an array whose
length is not the field count or is over its MaxLen, or a byte string
over its Fixed/MaxLen (a string over 4 bytes per allowed character), before
reading or allocating anything behind it. Maps and extensions never occur.
Nesting is as deep as the type, no deeper.

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
import struct
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
    """Decode `data` as `cls`, strictly; raises DecodeError with the reason.

    The bytes are read against the type, header by header: an item of the
    wrong kind, an array longer than its MaxLen or field count, or a byte
    string longer than its Fixed/MaxLen is refused at its header, before
    anything after it is read or allocated.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes exceeds limit of {max_size}")
    buf = bytes(data)
    where = cls.__name__ if isinstance(cls, type) else "value"
    try:
        value, end = _reader_for(cls)(buf, 0)
    except _Fail as fail:
        raise DecodeError(f"{where}{''.join(reversed(fail.path))}: {fail.reason}") from None
    except (IndexError, struct.error):
        raise DecodeError("malformed msgpack: message ends inside an item") from None
    if end != len(buf):
        raise DecodeError("trailing bytes after message")
    # Canonical form is unique: re-encoding must give the same bytes back.
    if encode(value) != buf:
        raise DecodeError(f"non-canonical encoding of {where}")
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


# --- decoding: one reader per type, compiled once -------------------------
#
# A reader is `read(buf, pos) -> (value, next_pos)`. It looks at the msgpack
# header at `pos`, checks it against the type (kind, length, field count)
# and only then reads the body, so a hostile message costs work in
# proportion to what the type allows, not to what the sender wrote.

_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
_I8 = struct.Struct(">b").unpack_from
_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F32 = struct.Struct(">f").unpack_from
_F64 = struct.Struct(">d").unpack_from

# The longest UTF-8 encoding of one character: bounds a string's bytes by its MaxLen.
_UTF8_MAX_BYTES = 4

Reader = typing.Callable[[bytes, int], "tuple[Any, int]"]


class _Fail(Exception):
    """A decode failure on its way up; each container adds its path segment."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _kind(b: int) -> str:
    """The Python name of the msgpack kind that header byte `b` starts (for messages)."""
    if b <= 0x7F or b >= 0xE0 or 0xCC <= b <= 0xD3:
        return "int"
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        return "list"
    if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB):
        return "str"
    if b in (0xC4, 0xC5, 0xC6):
        return "bytes"
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        return "map"
    if b == 0xC0:
        return "NoneType"
    if b in (0xC2, 0xC3):
        return "bool"
    if b in (0xCA, 0xCB):
        return "float"
    if b == 0xC1:
        raise _Fail("malformed msgpack: reserved byte 0xc1")
    return "extension"


def _read_array_header(buf: bytes, pos: int, expected: str) -> tuple[int, int]:
    b = buf[pos]
    if 0x90 <= b <= 0x9F:
        n, pos = b & 0x0F, pos + 1
    elif b == 0xDC:
        n, pos = _U16(buf, pos + 1)[0], pos + 3
    elif b == 0xDD:
        n, pos = _U32(buf, pos + 1)[0], pos + 5
    else:
        raise _Fail(f"expected {expected}, got {_kind(b)}")
    # Every item takes at least one byte: a count the rest cannot hold is a lie.
    if n > len(buf) - pos:
        raise _Fail(f"malformed msgpack: array of {n} items in {len(buf) - pos} remaining bytes")
    return n, pos


def _read_uint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b <= 0x7F:
        return b, pos + 1
    if b == 0xCC:
        return buf[pos + 1], pos + 2
    if b == 0xCD:
        return _U16(buf, pos + 1)[0], pos + 3
    if b == 0xCE:
        return _U32(buf, pos + 1)[0], pos + 5
    if b == 0xCF:
        return _U64(buf, pos + 1)[0], pos + 9
    if b >= 0xE0 or 0xD0 <= b <= 0xD3:
        raise _Fail("integer out of unsigned 64-bit range")
    raise _Fail(f"expected int, got {_kind(b)}")


def _read_int64(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b >= 0xE0:
        return b - 0x100, pos + 1
    if b == 0xD0:
        return _I8(buf, pos + 1)[0], pos + 2
    if b == 0xD1:
        return _I16(buf, pos + 1)[0], pos + 3
    if b == 0xD2:
        return _I32(buf, pos + 1)[0], pos + 5
    if b == 0xD3:
        return _I64(buf, pos + 1)[0], pos + 9
    value, end = _read_uint(buf, pos)
    if value > INT64_MAX:
        raise _Fail("integer out of signed 64-bit range")
    return value, end


def _read_bool(buf: bytes, pos: int) -> tuple[bool, int]:
    b = buf[pos]
    if b == 0xC3:
        return True, pos + 1
    if b == 0xC2:
        return False, pos + 1
    raise _Fail(f"expected bool, got {_kind(b)}")


def _read_float(buf: bytes, pos: int) -> tuple[float, int]:
    b = buf[pos]
    if b == 0xCB:
        value, end = _F64(buf, pos + 1)[0], pos + 9
    elif b == 0xCA:  # never canonical; the re-encode check refuses it
        value, end = _F32(buf, pos + 1)[0], pos + 5
    else:
        raise _Fail(f"expected float, got {_kind(b)}")
    if not math.isfinite(value):
        raise _Fail("float must be finite")
    return value, end


def _bytes_reader(exact: int | None, most: int | None) -> Reader:
    general = _any_bytes_reader(exact, most)
    if exact is not None and exact < 256:
        return _short_fixed_bytes_reader(exact, general)
    return general


def _any_bytes_reader(exact: int | None, most: int | None) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[bytes, int]:
        b = buf[pos]
        if b == 0xC4:
            n, pos = buf[pos + 1], pos + 2
        elif b == 0xC5:
            n, pos = _U16(buf, pos + 1)[0], pos + 3
        elif b == 0xC6:
            n, pos = _U32(buf, pos + 1)[0], pos + 5
        else:
            raise _Fail(f"expected bytes, got {_kind(b)}")
        if exact is not None and n != exact:
            raise _Fail(f"expected {exact} bytes, got {n}")
        if most is not None and n > most:
            raise _Fail(f"length {n} exceeds {most}")
        end = pos + n
        if end > len(buf):
            raise _Fail(f"malformed msgpack: {n} bytes announced, {len(buf) - pos} remain")
        return buf[pos:end], end

    return read


def _short_fixed_bytes_reader(exact: int, general: Reader) -> Reader:
    # Digests, keys and signatures: one header shape, checked in one step.
    def read(buf: bytes, pos: int) -> tuple[bytes, int]:
        end = pos + 2 + exact
        if buf[pos] == 0xC4 and buf[pos + 1] == exact and end <= len(buf):
            return buf[pos + 2 : end], end
        # Names what is wrong; a wider header than needed passes here and
        # the re-encode check refuses it.
        return general(buf, pos)

    return read


def _str_reader(exact: int | None, most: int | None) -> Reader:
    # Limits count characters; a character is 1 to 4 bytes, so the header's
    # byte count is checked against 4x the limit before anything is decoded.
    bound = None if exact is None and most is None else _UTF8_MAX_BYTES * min(x for x in (exact, most) if x is not None)

    def read(buf: bytes, pos: int) -> tuple[str, int]:
        b = buf[pos]
        if 0xA0 <= b <= 0xBF:
            n, pos = b & 0x1F, pos + 1
        elif b == 0xD9:
            n, pos = buf[pos + 1], pos + 2
        elif b == 0xDA:
            n, pos = _U16(buf, pos + 1)[0], pos + 3
        elif b == 0xDB:
            n, pos = _U32(buf, pos + 1)[0], pos + 5
        else:
            raise _Fail(f"expected str, got {_kind(b)}")
        if bound is not None and n > bound:
            raise _Fail(f"string of {n} bytes exceeds {bound // _UTF8_MAX_BYTES} characters")
        end = pos + n
        if end > len(buf):
            raise _Fail(f"malformed msgpack: {n} bytes announced, {len(buf) - pos} remain")
        try:
            text = buf[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail("malformed msgpack: string is not valid UTF-8") from None
        if exact is not None and len(text) != exact:
            raise _Fail(f"expected {exact} characters, got {len(text)}")
        if most is not None and len(text) > most:
            raise _Fail(f"length {len(text)} exceeds {most}")
        return text, end

    return read


def _sequence_reader(item: Reader, exact: int | None, most: int | None) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[tuple, int]:
        n, pos = _read_array_header(buf, pos, "array")
        if exact is not None and n != exact:
            raise _Fail(f"expected {exact} items, got {n}")
        if most is not None and n > most:
            raise _Fail(f"length {n} exceeds {most}")
        out = []
        append = out.append
        for i in range(n):
            try:
                value, pos = item(buf, pos)
            except _Fail as fail:
                fail.path.append(f"[{i}]")
                raise
            append(value)
        return tuple(out), pos

    return read


def _tuple_reader(items: list[Reader]) -> Reader:
    count = len(items)

    def read(buf: bytes, pos: int) -> tuple[tuple, int]:
        n, pos = _read_array_header(buf, pos, "array")
        if n != count:
            raise _Fail(f"expected {count} items, got {n}")
        out = []
        for i, item in enumerate(items):
            try:
                value, pos = item(buf, pos)
            except _Fail as fail:
                fail.path.append(f"[{i}]")
                raise
            out.append(value)
        return tuple(out), pos

    return read


def _optional_reader(inner: Reader) -> Reader:
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        if buf[pos] == 0xC0:
            return None, pos + 1
        return inner(buf, pos)

    return read


def _fields_reader(cls: type) -> Reader:
    fields = _fields(cls)
    hints = _hints(cls)
    readers = tuple(_reader_for(hints[f.name]) for f in fields)
    names = tuple(f.name for f in fields)
    count = len(fields)
    positional = not any(getattr(f, "kw_only", False) for f in fields)
    expected = f"array of {count} fields"

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        n, pos = _read_array_header(buf, pos, expected)
        if n != count:
            raise _Fail(f"expected {count} fields, got {n}")
        values: list = []
        append = values.append
        try:
            for item in readers:
                value, pos = item(buf, pos)
                append(value)
        except _Fail as fail:
            fail.path.append("." + names[len(values)])
            raise
        try:
            obj = cls(*values) if positional else cls(**dict(zip(names, values, strict=True)))
        except (ValueError, TypeError) as exc:
            raise _Fail(str(exc)) from None
        return obj, pos

    return read


def _tagged_reader(options: tuple) -> Reader:
    by_tag: dict[int, tuple[str, Reader]] = {}
    for cls in options:
        tag = getattr(cls, "TAG", None)
        if isinstance(tag, int) and tag not in by_tag:
            by_tag[tag] = (f"<{cls.__name__}>", _fields_reader(cls))

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        try:
            n, pos = _read_array_header(buf, pos, "[tag, fields]")
            if n != 2:
                raise _Fail("expected [tag, fields]")
            tag, pos = _read_int64(buf, pos)
        except _Fail as fail:
            if fail.reason.startswith("malformed"):
                raise
            raise _Fail("expected [tag, fields]") from None
        entry = by_tag.get(tag)
        if entry is None:
            raise _Fail(f"unknown type tag {tag}")
        segment, fields = entry
        try:
            return fields(buf, pos)
        except _Fail as fail:
            fail.path.append(segment)
            raise

    return read


def _annotated_reader(base: Any, meta: list) -> Reader:
    if base is int and any(isinstance(m, Signed) for m in meta):
        return _read_int64
    exact = next((m.length for m in meta if isinstance(m, Fixed)), None)
    most = min((m.length for m in meta if isinstance(m, MaxLen)), default=None)
    if base is bytes:
        return _bytes_reader(exact, most)
    if base is str:
        return _str_reader(exact, most)
    if get_origin(base) is tuple and len(get_args(base)) == 2 and get_args(base)[1] is Ellipsis:
        return _sequence_reader(_reader_for(get_args(base)[0]), exact, most)
    inner = _reader_for(base)
    if exact is None and most is None:
        return inner

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        value, pos = inner(buf, pos)
        if exact is not None and len(value) != exact:
            raise _Fail(f"expected {exact} items, got {len(value)}")
        if most is not None and len(value) > most:
            raise _Fail(f"length {len(value)} exceeds {most}")
        return value, pos

    return read


def _build_reader(tp: Any) -> Reader:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        return _annotated_reader(base, meta)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if type(None) in options:
            rest = tuple(o for o in options if o is not type(None))
            return _optional_reader(_reader_for(rest[0] if len(rest) == 1 else Union[rest]))
        return _tagged_reader(options)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence_reader(_reader_for(args[0]), None, None)
        return _tuple_reader([_reader_for(a) for a in args])
    if dataclasses.is_dataclass(tp):
        return _tagged_reader((tp,)) if _is_tagged(tp) else _fields_reader(tp)
    simple = {bool: _read_bool, int: _read_uint, float: _read_float}
    if tp in simple:
        return simple[tp]
    if tp is str:
        return _str_reader(None, None)
    if tp is bytes:
        return _bytes_reader(None, None)
    raise TypeError(f"unsupported field type {tp!r}")


_READERS: dict[Any, Reader] = {}
_BUILDING: set[Any] = set()


def _reader_for(tp: Any) -> Reader:
    """The (cached) reader of type `tp`."""
    reader = _READERS.get(tp)
    if reader is not None:
        return reader
    if tp in _BUILDING:  # a type that contains itself: look it up when called
        return lambda buf, pos: _READERS[tp](buf, pos)
    _BUILDING.add(tp)
    try:
        reader = _build_reader(tp)
    finally:
        _BUILDING.discard(tp)
    _READERS[tp] = reader
    return reader


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
