"""Header values that keep their AMQP type and value when a delivery's headers are
published again (retry copies, dead letters, DLQ replay).

pamqp decodes a header table into plain values and encodes by Python type: a double
comes back as a 32-bit float, a Java long as a byte, a non-UTF-8 string cannot be sent.
`install_type_preserving_decoder` wraps entries of pamqp's `decode.TABLE_MAPPING` and
`decode.METHODS`, process-wide, because pamqp offers no per-connection hook and nothing
else sees a header's wire type on receipt. It stays value-transparent: decoded values
are int, float and datetime subclasses equal to what pamqp gave before, so other pamqp
users see no difference. Where pamqp could not decode at all (a non-UTF-8 header name
or short string, a timestamp after the year 9999), which made aiormq drop the whole
connection, the value arrives instead: text with its bytes kept as surrogate escapes,
or a `RawTimestamp`. `encode_table` and `WireProperties` send them all back with their
own type and bytes.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from pamqp import commands, common, decode, encode

from ..errors import HeaderError
from .header_types import (
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    MillisecondTimestamp,
    RawTimestamp,
    TypedFloat,
    TypedInt,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
)

__all__ = [
    "Float32",
    "Float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "MillisecondTimestamp",
    "RawTimestamp",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "WireProperties",
    "encode_table",
    "install_type_preserving_decoder",
]

_Path = tuple[str | int, ...]
_Decoder = Callable[..., tuple[int, common.FieldValue]]


def _uint64(value: int) -> bytes:
    # Same 64 bits either way: the unsigned reading is folded onto the signed one.
    if 2**63 <= value < 2**64:
        value -= 2**64
    return encode.long_long_int(value)


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "b": common.Struct.short_short_int.pack,
    "B": encode.octet,
    "s": encode.short_int,
    "u": encode.short_uint,
    "I": encode.long_int,
    "i": encode.long_uint,
    "l": encode.long_long_int,
    "L": _uint64,
    "f": encode.floating_point,
    "d": encode.double,
    "T": common.Struct.timestamp.pack,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS_MAX = 0xFFFFFFFF  # pamqp's cut-off between seconds and milliseconds


def _milliseconds(value: datetime) -> bytes:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive means UTC, as pamqp assumes
    micros = (value - _EPOCH) // timedelta(microseconds=1)
    # Rounded, not floored: pamqp's float division may land a microsecond short.
    return common.Struct.timestamp.pack((micros + 500) // 1000)


def encode_table(headers: Mapping[str, Any], *, finite: bool = False) -> bytes:
    """Encode a header table (the 4-byte length and the entries, in the mapping's order).

    Typed values keep their code; a bool is 't', an int the smallest type pamqp picks,
    a float 'd', a str 'S', bytes 'S' as raw bytes, a bytearray 'x', None 'V', a
    Decimal 'D', a datetime 'T', a mapping 'F', a list or tuple 'A'.

    Raises HeaderError naming the header (and where in it) for a value AMQP cannot
    carry: an int over 64 bits, an unknown type, a key that is not a str of at most
    255 bytes; with `finite`, also for a NaN or infinite float, which AMQP can carry
    but RabbitMQ refuses by closing the connection.
    """
    return _table(headers, (), finite)


def _table(table: Mapping[Any, Any], path: _Path, finite: bool) -> bytes:
    parts: list[bytes] = []
    for key, value in table.items():
        where = (*path, key if isinstance(key, str) else repr(key))
        parts.append(_key(key, where))
        parts.append(_value(value, where, finite))
    body = b"".join(parts)
    return common.Struct.integer.pack(len(body)) + body


def _array(items: Sequence[Any], path: _Path, finite: bool) -> bytes:
    body = b"".join(_value(item, (*path, i), finite) for i, item in enumerate(items))
    return common.Struct.integer.pack(len(body)) + body


def _key(key: object, path: _Path) -> bytes:
    if not isinstance(key, str):
        raise _error(path, f"a key must be a str, not {type(key).__name__}")
    try:
        raw = _text_bytes(key)
    except UnicodeEncodeError as exc:
        raise _error(path, "a key that is not valid UTF-8") from exc
    if len(raw) > 255:
        raise _error(path, f"a key of {len(raw)} bytes is over AMQP's 255")
    return encode.octet(len(raw)) + raw


def _text_bytes(text: str) -> bytes:
    """UTF-8, or the original bytes of text decoded with surrogate escapes."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _short_string(text: str) -> bytes:
    raw = _text_bytes(text)
    if len(raw) > 255:
        raise TypeError(f"a short string of {len(raw)} bytes is over AMQP's 255")
    return encode.octet(len(raw)) + raw


def _long_string(raw: bytes) -> bytes:
    return b"S" + common.Struct.integer.pack(len(raw)) + raw


# The AMQP type of each Python type; the first match wins (bool before int, the
# typed values before plain int and float, a millisecond timestamp before datetime).
_SCALARS: tuple[tuple[Any, Callable[[Any], bytes]], ...] = (
    (bool, lambda v: b"t" + encode.boolean(v)),
    (TypedInt | TypedFloat, lambda v: v.amqp_type.encode() + _ENCODERS[v.amqp_type](v)),
    (int, encode.table_integer),
    (float, lambda v: b"d" + encode.double(v)),
    (str, lambda v: _long_string(_text_bytes(v))),
    (bytes, _long_string),
    (bytearray, lambda v: b"x" + encode.byte_array(v)),
    (type(None), lambda v: b"V"),
    (Decimal, lambda v: b"D" + encode.decimal(v)),
    (MillisecondTimestamp, lambda v: b"T" + _milliseconds(v)),
    (datetime | time.struct_time, lambda v: b"T" + encode.timestamp(v)),
)


def _value(value: Any, path: _Path, finite: bool) -> bytes:
    if finite and isinstance(value, float) and not math.isfinite(value):
        raise _error(path, "a NaN or infinite float, which RabbitMQ refuses")
    for kind, encoder in _SCALARS:
        if isinstance(value, kind):
            try:
                return encoder(value)
            except (TypeError, ValueError, OverflowError, struct.error) as exc:
                raise _error(path, _out_of_range(value, exc)) from exc
    if isinstance(value, Mapping):
        return b"F" + _table(value, path, finite)
    if isinstance(value, list | tuple):
        return b"A" + _array(value, path, finite)
    raise _error(path, f"AMQP has no type for a {type(value).__name__}")


def _out_of_range(value: object, exc: Exception) -> str:
    # Says why without quoting the value: headers can hold secrets.
    kind = type(value).__name__
    if isinstance(value, TypedInt | TypedFloat):
        return f"a {kind} out of range for AMQP type {value.amqp_type!r}: {exc}"
    if isinstance(value, int):
        return f"an int of {value.bit_length()} bits does not fit in AMQP's 64-bit integers"
    return f"AMQP cannot carry this {kind}: {exc}"


def _error(path: _Path, why: str) -> HeaderError:
    header = str(path[0])
    if len(path) == 1:
        return HeaderError(f"header {header!r}: {why}", header=header)
    where = header + "".join(f"[{step!r}]" for step in path[1:])
    return HeaderError(f"header {header!r} at {where}: {why}", header=header)


class _TypedDecoder:
    """One pamqp decoder, wrapped to give its value a typed class, and to decode what
    pamqp cannot (`rescue`) instead of failing the whole frame."""

    __slots__ = ("convert", "inner", "rescue")

    def __init__(
        self,
        inner: _Decoder,
        convert: Callable[[Any, bytes], Any] | None,
        rescue: _Decoder | None = None,
    ) -> None:
        self.inner = inner
        self.convert = convert
        self.rescue = rescue

    def __call__(self, data: bytes) -> tuple[int, common.FieldValue]:
        try:
            consumed, value = self.inner(data)
        except (ValueError, OverflowError, OSError):
            if self.rescue is None:
                raise
            return self.rescue(data)
        if self.convert is None:
            return consumed, value
        return consumed, self.convert(value, data)


def _as(cls: type[TypedInt | TypedFloat]) -> Callable[[Any, bytes], Any]:
    return lambda value, _data: cls(value)


def _as_timestamp(value: datetime, data: bytes) -> datetime:
    if common.Struct.timestamp.unpack_from(data)[0] <= _SECONDS_MAX:
        return value
    return MillisecondTimestamp.combine(value.date(), value.timetz())


def _raw_timestamp(data: bytes) -> tuple[int, common.FieldValue]:
    # pamqp's datetime ends at the year 9999; the broker passes on any 64 bits.
    try:
        (count,) = common.Struct.timestamp.unpack_from(data)
    except struct.error as exc:
        raise ValueError("could not unpack timestamp value") from exc
    return 8, RawTimestamp(count)


def _escaped_short_string(data: bytes) -> tuple[int, common.FieldValue]:
    length = data[0] if data else 0
    if length + 1 > len(data):
        raise ValueError("could not unpack short string value")
    return length + 1, data[1 : length + 1].decode("utf-8", "surrogateescape")


def _escaped_table(data: bytes) -> tuple[int, common.FieldValue]:
    """pamqp's field table, with names that are not UTF-8 kept as surrogate escapes."""
    try:
        (length,) = common.Struct.integer.unpack_from(data)
    except struct.error as exc:
        raise ValueError("could not unpack field table") from exc
    end = 4 + length
    if end > len(data):
        raise ValueError("field table length exceeds available data")
    table: dict[str, common.FieldValue] = {}
    offset = 4
    while offset < end:
        consumed, key = _escaped_short_string(data[offset:end])
        offset += consumed
        consumed, value = decode.embedded_value(data[offset:end])
        offset += consumed
        table[str(key)] = value
    return end, table


_CONVERTERS: dict[bytes, Callable[[Any, bytes], Any]] = {
    cls.amqp_type.encode(): _as(cls)
    for cls in (Int8, UInt8, Int16, UInt16, Int32, UInt32, Int64, UInt64, Float32, Float64)
}
_TIMESTAMP = (_as_timestamp, _raw_timestamp)
_TABLE = (None, _escaped_table)
_Rescue = tuple[Callable[[Any, bytes], Any] | None, _Decoder]
_RESCUED: dict[bytes, _Rescue] = {
    b"T": _TIMESTAMP,
    b"F": _TABLE,
}
# Properties and method fields, decoded by type name rather than type code.
_RESCUED_BY_NAME: dict[str, _Rescue] = {
    "timestamp": _TIMESTAMP,
    "table": _TABLE,
    "shortstr": (None, _escaped_short_string),
}


def install_type_preserving_decoder() -> None:
    """Make pamqp decode header numbers (and millisecond timestamps) into the typed
    classes above, and decode what it used to fail on, process-wide. Idempotent; the
    decoded values are equal to before."""
    for code, convert in _CONVERTERS.items():
        _wrap(decode.TABLE_MAPPING, code, (convert, None))
    for code, rescued in _RESCUED.items():
        _wrap(decode.TABLE_MAPPING, code, rescued)
    for name, rescued in _RESCUED_BY_NAME.items():
        _wrap(decode.METHODS, name, rescued)


def _wrap(
    table: dict[Any, _Decoder],
    key: Any,
    how: tuple[Callable[[Any, bytes], Any] | None, _Decoder | None],
) -> None:
    inner = table[key]
    if not isinstance(inner, _TypedDecoder):
        table[key] = _TypedDecoder(inner, *how)


class WireProperties(commands.Basic.Properties):
    """`Basic.Properties` whose headers are encoded by `encode_table`, so each value
    goes out with its own type; aiormq's `basic_publish(properties=...)` sends them.

    Marshalling raises HeaderError for a header AMQP cannot carry, or RabbitMQ
    refuses (a NaN or infinite float: the broker would close the connection).
    """

    # No __slots__ here: pamqp marshals the properties listed in the class's __slots__.

    def encode_property(self, name: str, value: common.FieldValue) -> bytes:
        if name == "headers" and isinstance(value, Mapping):
            return encode_table(value, finite=True)
        if name == "timestamp" and isinstance(value, MillisecondTimestamp):
            return _milliseconds(value)
        if name == "timestamp" and isinstance(value, RawTimestamp):
            return common.Struct.timestamp.pack(value)
        if isinstance(value, str) and self.amqp_type(name) == "shortstr":
            return _short_string(value)  # text decoded with surrogate escapes, too
        return super().encode_property(name, value)

    @classmethod
    def from_properties(cls, properties: commands.Basic.Properties) -> WireProperties:
        """The same properties, with headers encoded by `encode_table`."""
        return cls(**{name: getattr(properties, name) for name in properties.__slots__})
