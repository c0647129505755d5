"""Header values that remember their AMQP type: ints and floats sent with the type
code they arrived with (or are given), and timestamps that stay in milliseconds or
are too far ahead for a datetime. `headers` decodes into them and encodes them."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

__all__ = [
    "Float32",
    "Float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "MillisecondTimestamp",
    "RawTimestamp",
    "TypedFloat",
    "TypedInt",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
]


class TypedInt(int):
    """An int that is sent with its own AMQP type code, `amqp_type`."""

    amqp_type: ClassVar[str]
    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int.__repr__(self)})"

    # int has no __str__ of its own: without this, str() and f-strings would use the repr.
    __str__ = int.__repr__


class Int8(TypedInt):
    """An int sent as AMQP 'b' (signed 8-bit)."""

    amqp_type = "b"
    __slots__ = ()


class UInt8(TypedInt):
    """An int sent as AMQP 'B' (unsigned 8-bit)."""

    amqp_type = "B"
    __slots__ = ()


class Int16(TypedInt):
    """An int sent as AMQP 's' (signed 16-bit)."""

    amqp_type = "s"
    __slots__ = ()


class UInt16(TypedInt):
    """An int sent as AMQP 'u' (unsigned 16-bit)."""

    amqp_type = "u"
    __slots__ = ()


class Int32(TypedInt):
    """An int sent as AMQP 'I' (signed 32-bit)."""

    amqp_type = "I"
    __slots__ = ()


class UInt32(TypedInt):
    """An int sent as AMQP 'i' (unsigned 32-bit)."""

    amqp_type = "i"
    __slots__ = ()


class Int64(TypedInt):
    """An int sent as AMQP 'l' (signed 64-bit)."""

    amqp_type = "l"
    __slots__ = ()


class UInt64(TypedInt):
    """An int sent as AMQP 'L'; any value from -2**63 to 2**64-1, written as its 64 bits.

    pamqp and RabbitMQ read 'L' as signed (RabbitMQ re-encodes it as 'l'), so a
    received value is signed; it is kept as is so decoding stays value-transparent.
    """

    amqp_type = "L"
    __slots__ = ()


class TypedFloat(float):
    """A float that is sent with its own AMQP type code, `amqp_type`."""

    amqp_type: ClassVar[str]
    __slots__ = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({float.__repr__(self)})"

    __str__ = float.__repr__


class Float32(TypedFloat):
    """A float sent as AMQP 'f' (32-bit); a plain float is sent as 'd'."""

    amqp_type = "f"
    __slots__ = ()


class Float64(TypedFloat):
    """A float sent as AMQP 'd' (64-bit), as a plain float is."""

    amqp_type = "d"
    __slots__ = ()


class MillisecondTimestamp(datetime):
    """A datetime sent as an AMQP 'T' counting milliseconds, not seconds.

    pamqp reads a 'T' above 2**32-1 as milliseconds (some clients send them); this
    keeps such a value in milliseconds when it is sent again.
    """

    __slots__ = ()


class RawTimestamp(TypedInt):
    """An AMQP 'T' too far ahead for a datetime (after the year 9999), kept as the
    unsigned 64-bit count it arrived as."""

    amqp_type = "T"
    __slots__ = ()
