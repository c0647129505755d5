"""Header values keep their AMQP type code and value when decoded and sent again, on
their own and through RabbitMQ, and plain pamqp behaviour is unchanged."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiormq
import pydantic
import pytest
from pamqp import commands, decode, encode
from pamqp.common import Struct
from support import eventually

from rabbitworker._amqp.headers import (
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    MillisecondTimestamp,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    WireProperties,
    encode_table,
    install_type_preserving_decoder,
)
from rabbitworker.errors import HeaderError, PublishError


@pytest.fixture(autouse=True, scope="module")
def type_preserving_decoder() -> Iterator[None]:
    install_type_preserving_decoder()
    yield


def entry(key: str, code: bytes, payload: bytes = b"") -> bytes:
    return encode.short_string(key) + code + payload


def sized(body: bytes) -> bytes:
    """A field table or array body with its 4-byte length in front."""
    return Struct.integer.pack(len(body)) + body


def roundtrip(wire: bytes) -> bytes:
    """Decode a field table as a consumer does, and encode it again for a publish."""
    consumed, headers = decode.field_table(wire)
    assert consumed == len(wire)
    assert isinstance(headers, dict)
    return encode_table(headers)


def code_of(value: Any) -> bytes:
    return encode_table({"k": value})[6:7]


NON_UTF8 = b"\xff\xfeA"
NESTED_TABLE = sized(
    entry("double", b"d", Struct.double.pack(0.1))
    + entry("long", b"l", encode.long_long_int(5))
    + entry("inner", b"F", sized(entry("bytes", b"S", sized(NON_UTF8))))
)
MIXED_ARRAY = sized(
    b"d" + Struct.double.pack(1732612345.123)
    + b"b" + Struct.short_short_int.pack(-1)
    + b"S" + sized(NON_UTF8)
    + b"x" + encode.byte_array(bytearray(b"\x00\xff"))
    + b"A" + sized(b"u" + encode.short_uint(7) + b"V")
    + b"F" + sized(entry("f", b"f", encode.floating_point(0.1)))
)  # fmt: skip

EVERY_TYPE = [
    ("true", b"t", encode.boolean(True)),
    ("false", b"t", encode.boolean(False)),
    ("int8 min", b"b", Struct.short_short_int.pack(-128)),
    ("int8 max", b"b", Struct.short_short_int.pack(127)),
    ("uint8 0", b"B", encode.octet(0)),
    ("uint8 max", b"B", encode.octet(255)),
    ("int16 min", b"s", encode.short_int(-(2**15))),
    ("int16 max", b"s", encode.short_int(2**15 - 1)),
    ("uint16 max", b"u", encode.short_uint(2**16 - 1)),
    ("int32 min", b"I", encode.long_int(-(2**31))),
    ("int32 max", b"I", encode.long_int(2**31 - 1)),
    ("uint32 max", b"i", encode.long_uint(2**32 - 1)),
    ("int64 5, as a Java long", b"l", encode.long_long_int(5)),
    ("int64 min", b"l", encode.long_long_int(-(2**63))),
    ("int64 max", b"l", encode.long_long_int(2**63 - 1)),
    ("uint64 5", b"L", struct.pack(">Q", 5)),
    ("uint64 max", b"L", struct.pack(">Q", 2**64 - 1)),
    ("float32", b"f", encode.floating_point(1.5)),
    ("float32 of 0.1", b"f", struct.pack(">f", 0.1)),
    ("float32 -inf", b"f", struct.pack(">f", -math.inf)),
    ("double", b"d", struct.pack(">d", 1732612345.123)),
    ("double -0.0", b"d", struct.pack(">d", -0.0)),
    ("double nan", b"d", struct.pack(">d", math.nan)),
    ("decimal", b"D", encode.decimal(Decimal("-1.25"))),
    ("decimal max mantissa", b"D", encode.decimal(Decimal("2147483.647"))),
    ("utf-8 string", b"S", encode.long_string("héllo")),
    ("empty string", b"S", encode.long_string("")),
    ("non-utf-8 string", b"S", sized(NON_UTF8)),
    ("byte array", b"x", encode.byte_array(bytearray(b"\x00\x01\xff"))),
    ("empty byte array", b"x", encode.byte_array(bytearray())),
    ("timestamp", b"T", encode.timestamp(datetime(2024, 11, 26, 9, 12, 25, tzinfo=UTC))),
    ("timestamp in ms", b"T", Struct.timestamp.pack(1732612345123)),
    ("timestamp in ms, smallest", b"T", Struct.timestamp.pack(2**32)),
    ("timestamp in ms, year 9000", b"T", Struct.timestamp.pack(221845392000999)),
    ("void", b"V", b""),
    ("empty table", b"F", encode.field_table({})),
    ("nested table", b"F", NESTED_TABLE),
    ("mixed array", b"A", MIXED_ARRAY),
]


@pytest.mark.parametrize(
    ("code", "payload"), [case[1:] for case in EVERY_TYPE], ids=[case[0] for case in EVERY_TYPE]
)
def test_every_type_code_is_encoded_again_to_the_same_bytes(code: bytes, payload: bytes) -> None:
    wire = sized(entry("k", code, payload))

    assert roundtrip(wire) == wire


def test_a_table_is_encoded_again_in_its_own_key_order_not_sorted() -> None:
    wire = sized(entry("z", b"l", encode.long_long_int(1)) + entry("a", b"d", b"\0" * 8))

    assert roundtrip(wire) == wire


def test_a_double_keeps_all_64_bits() -> None:
    wire = sized(entry("sent-at", b"d", struct.pack(">d", 1732612345.123)))

    again = roundtrip(wire)

    assert struct.unpack(">d", again[-8:]) == (1732612345.123,)
    assert again == wire


@pytest.mark.parametrize(
    ("code", "payload", "pamqp_decoder", "cls"),
    [
        (b"b", Struct.short_short_int.pack(-3), decode.short_short_int, Int8),
        (b"B", encode.octet(200), decode.short_short_uint, UInt8),
        (b"s", encode.short_int(-300), decode.short_int, Int16),
        (b"u", encode.short_uint(60000), decode.short_uint, UInt16),
        (b"I", encode.long_int(-70000), decode.long_int, Int32),
        (b"i", encode.long_uint(3_000_000_000), decode.long_uint, UInt32),
        (b"l", encode.long_long_int(5), decode.long_long_int, Int64),
        (b"L", struct.pack(">Q", 5), decode.long_long_int, UInt64),
        (b"f", encode.floating_point(0.5), decode.floating_point, Float32),
        (b"d", encode.double(0.1), decode.double, Float64),
        (b"T", Struct.timestamp.pack(1732612345123), decode.timestamp, MillisecondTimestamp),
    ],
)
def test_a_decoded_number_carries_its_type_and_equals_what_pamqp_alone_gives(
    code: bytes, payload: bytes, pamqp_decoder: Callable[[bytes], tuple[int, Any]], cls: type
) -> None:
    plain = pamqp_decoder(payload)[1]

    value = decode.field_table(sized(entry("k", code, payload)))[1]["k"]

    assert type(value) is cls
    assert value == plain
    assert hash(value) == hash(plain)
    assert type(plain) is not cls


def test_a_timestamp_in_seconds_stays_a_plain_datetime() -> None:
    wire = sized(entry("k", b"T", Struct.timestamp.pack(1732612345)))

    assert type(decode.field_table(wire)[1]["k"]) is datetime


def test_an_unsigned_64_bit_value_is_read_signed_as_rabbitmq_does_and_sent_with_the_same_bits() -> (
    None
):
    wire = sized(entry("k", b"L", struct.pack(">Q", 2**64 - 1)))

    value = decode.field_table(wire)[1]["k"]

    assert value == UInt64(-1)
    assert encode_table({"k": value}) == encode_table({"k": UInt64(2**64 - 1)}) == wire


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (True, b"t\x01"),
        (5, b"b\x05"),
        (-200, b"s" + encode.short_int(-200)),
        (40000, b"u" + encode.short_uint(40000)),
        (2**40, b"l" + encode.long_long_int(2**40)),
        (1.5, b"d" + struct.pack(">d", 1.5)),
        (1732612345.123, b"d" + struct.pack(">d", 1732612345.123)),
        ("héllo", b"S" + encode.long_string("héllo")),
        (NON_UTF8, b"S" + sized(NON_UTF8)),
        (bytearray(b"\x00"), b"x" + encode.byte_array(bytearray(b"\x00"))),
        (None, b"V"),
        (Decimal("9.99"), b"D" + encode.decimal(Decimal("9.99"))),
        (datetime(2024, 1, 1), b"T" + encode.timestamp(datetime(2024, 1, 1, tzinfo=UTC))),
        ({"a": 1}, b"F" + sized(entry("a", b"b\x01"))),
        ([1, "x"], b"A" + sized(b"b\x01S" + encode.long_string("x"))),
        ((1, "x"), b"A" + sized(b"b\x01S" + encode.long_string("x"))),
        (Int64(5), b"l" + encode.long_long_int(5)),
        (Float32(1.5), b"f" + encode.floating_point(1.5)),
    ],
    ids=repr,
)
def test_a_python_value_is_sent_as_its_documented_type(value: Any, wire: bytes) -> None:
    assert encode_table({"k": value}) == sized(entry("k", wire[:1], wire[1:]))


@pytest.mark.parametrize(
    ("headers", "header", "where"),
    [
        ({"n": 2**70}, "n", "int of 71 bits"),
        ({"n": -(2**63) - 1}, "n", "int of 64 bits"),
        ({"thing": object()}, "thing", "no type for a object"),
        ({"k" * 300: 1}, "k" * 300, "key of 300 bytes"),
        ({"small": Int8(300)}, "small", "Int8 out of range for AMQP type 'b'"),
        ({"outer": {"inner": [1, 2**70]}}, "outer", "outer['inner'][1]: an int of 71 bits"),
        ({"outer": {"k" * 256: 1}}, "outer", "key of 256 bytes"),
        ({"outer": {5: 1}}, "outer", "a key must be a str, not int"),
        ({"price": Decimal("NaN")}, "price", "cannot carry this Decimal"),
        ({"when": datetime(1960, 1, 1, tzinfo=UTC)}, "when", "cannot carry this datetime"),
    ],
    ids=["2**70", "below int64", "object", "300-byte key", "Int8(300)", "nested path",
         "nested long key", "int key", "NaN decimal", "before 1970"],
)  # fmt: skip
def test_a_header_amqp_cannot_carry_is_refused_naming_the_header_and_why(
    headers: dict[str, Any], header: str, where: str
) -> None:
    with pytest.raises(HeaderError) as raised:
        encode_table(headers)

    assert raised.value.header == header
    assert f"header {header!r}" in str(raised.value)
    assert where in str(raised.value)
    assert isinstance(raised.value, PublishError)


def test_a_secret_in_a_refused_header_is_not_in_the_message() -> None:
    with pytest.raises(HeaderError) as raised:
        encode_table({"token": 2**70 + 1234567})

    assert str(2**70 + 1234567) not in str(raised.value)


def test_installing_the_decoder_twice_wraps_pamqp_once() -> None:
    before = dict(decode.TABLE_MAPPING)

    install_type_preserving_decoder()

    assert before == decode.TABLE_MAPPING
    assert decode.field_table(sized(entry("k", b"l", encode.long_long_int(5))))[1] == {"k": 5}


@pytest.mark.parametrize(
    ("value", "plain", "shown"),
    [
        (Int64(5), 5, "Int64(5)"),
        (UInt8(255), 255, "UInt8(255)"),
        (Float64(0.1), 0.1, "Float64(0.1)"),
    ],
)
def test_a_typed_value_behaves_like_its_plain_value(value: Any, plain: Any, shown: str) -> None:
    class Model(pydantic.BaseModel):
        number: float
        headers: dict[str, Any]

    model = Model(number=value, headers={"k": value})

    assert value == plain and hash(value) == hash(plain)
    assert {value: "x"}[plain] == "x"
    assert str(value) == f"{value}" == str(plain)
    assert repr(value) == shown
    assert json.dumps({"k": value}) == json.dumps({"k": plain})
    assert model.number == plain
    assert model.model_dump_json() == Model(number=plain, headers={"k": plain}).model_dump_json()
    assert not hasattr(value, "__dict__")


def test_pamqps_own_encoder_gives_the_same_bytes_for_decoded_values_as_for_plain_ones() -> None:
    plain: dict[str, Any] = {
        "f": 1.5,
        "n": 5,
        "big": 70000,
        "s": "x",
        "t": True,
        "nested": {"d": 0.25, "a": [1, 2.5, "y"]},
    }
    wire = encode.field_table(plain)

    decoded = decode.field_table(wire)[1]

    assert decoded == plain
    assert encode.field_table(decoded) == wire


# ---- through RabbitMQ ---------------------------------------------------------------

EVERY_BROKER_TYPE: dict[str, Any] = {
    "bool": True,
    "int8": Int8(-5),
    "uint8": UInt8(255),
    "int16": Int16(-300),
    "uint16": UInt16(65535),
    "int32": Int32(-(2**31)),
    "uint32": UInt32(2**32 - 1),
    "int64": Int64(5),
    "uint64": UInt64(2**62),
    "float32": Float32(1.5),
    "double": 1732612345.123,
    "decimal": Decimal("-1.25"),
    "string": "héllo",
    "non-utf-8 string": NON_UTF8,
    "byte array": bytearray(b"\x00\x01\xff"),
    "timestamp": datetime(2024, 11, 26, 9, 12, 25, tzinfo=UTC),
    "timestamp in ms": MillisecondTimestamp(2024, 11, 26, 9, 12, 25, 123000, tzinfo=UTC),
    "void": None,
    "table": {"double": 0.1, "long": Int64(7), "inner": {"bytes": NON_UTF8}},
    "array": [Int64(1), 2.5, NON_UTF8, [Int8(1), Float32(0.5)], {"a": UInt8(1)}],
    "k" * 255: "a key of 255 bytes",
}


@pytest.fixture
async def channel(broker_url: str) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(broker_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
async def queue(channel: aiormq.abc.AbstractChannel, prefix: str) -> AsyncIterator[str]:
    name = f"{prefix}.headers"
    await channel.queue_declare(name)
    yield name
    await channel.queue_delete(name)


async def send_and_receive(
    channel: aiormq.abc.AbstractChannel, queue: str, properties: commands.Basic.Properties
) -> dict[str, Any]:
    return (await send_and_get(channel, queue, properties)).headers or {}


async def send_and_get(
    channel: aiormq.abc.AbstractChannel, queue: str, properties: commands.Basic.Properties
) -> commands.Basic.Properties:
    await channel.basic_publish(b"{}", routing_key=queue, properties=properties)
    received: list[aiormq.abc.DeliveredMessage] = []

    async def got_one() -> bool:
        message = await channel.basic_get(queue, no_ack=True)
        if message.header.properties.headers is not None:
            received.append(message)
        return bool(received)

    await eventually(got_one)
    return received[0].header.properties


def assert_same_types_and_values(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        assert (key, code_of(got[key]), got[key]) == (key, code_of(value), value)
    assert encode_table(got) == encode_table(want)


async def test_every_type_rabbitmq_accepts_survives_being_received_and_published_again(
    channel: aiormq.abc.AbstractChannel, queue: str
) -> None:
    first = await send_and_receive(channel, queue, WireProperties(headers=EVERY_BROKER_TYPE))
    assert_same_types_and_values(first, EVERY_BROKER_TYPE)

    second = await send_and_receive(channel, queue, WireProperties(headers=first))
    assert_same_types_and_values(second, EVERY_BROKER_TYPE)


async def test_properties_copied_into_wire_properties_keep_everything_else(
    channel: aiormq.abc.AbstractChannel, queue: str
) -> None:
    plain = commands.Basic.Properties(
        content_type="application/json", headers={"sent-at": 0.1}, message_id="m-1"
    )

    received = await send_and_get(channel, queue, WireProperties.from_properties(plain))

    assert received.headers == {"sent-at": 0.1}
    assert type(received.headers["sent-at"]) is Float64  # plain properties send 'f'
    assert (received.content_type, received.message_id) == ("application/json", "m-1")


async def test_plain_properties_still_send_plain_values_as_pamqp_always_did(
    channel: aiormq.abc.AbstractChannel, queue: str
) -> None:
    plain: dict[str, Any] = {"f": 1.5, "n": 5, "s": "x", "list": [1, 2.5]}

    received = await send_and_receive(channel, queue, commands.Basic.Properties(headers=plain))

    assert received == plain
    assert type(received["f"]) is Float32  # pamqp sends a float as 'f'
    assert encode.field_table(received) == encode.field_table(plain)
    resent = await send_and_receive(channel, queue, commands.Basic.Properties(headers=received))
    assert resent == plain
