"""Every header a producer sent reaches the retry copy, the dead letter and the copy
`dlq replay` sends back with its AMQP type and value unchanged, through a real worker
and the real CLI; so do the values pamqp alone could not even decode (a header name
that is not UTF-8, a timestamp after the year 9999), which used to cost the worker
its connection."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiormq
import pytest
from pamqp import commands, decode
from pamqp.common import Struct
from support import APPS, eventually, read_record

from rabbitworker import App, Context, Middleware, TaskMessage
from rabbitworker._amqp.headers import (
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    MillisecondTimestamp,
    RawTimestamp,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    WireProperties,
    encode_table,
)
from rabbitworker.errors import HeaderError
from rabbitworker.topology import (
    dead_letter_exchange_name,
    dead_letter_queue_name,
    retry_exchange_name,
    retry_queue_name,
)

sys.path.insert(0, str(APPS))

from failures_support import run_cli

NON_UTF8 = b"\xff\xfeA"
# A header name that is not UTF-8, as a Java or Erlang producer can send one: it
# decodes to text with its bytes kept as surrogate escapes.
ESCAPED_NAME = b"name-\xff\xfe".decode("utf-8", "surrogateescape")

SENT: dict[str, Any] = {
    "bool": True,
    "int8": Int8(-5),
    "uint8": UInt8(255),
    "int16": Int16(-300),
    "uint16": UInt16(65535),
    "int32": Int32(-(2**31)),
    "uint32": UInt32(2**32 - 1),
    "int64": Int64(5),
    "uint64": UInt64(2**62),
    "float32": Float32(0.1),
    "double": 1732612345.123,
    "tiny double": 5e-324,
    "negative zero": -0.0,
    "decimal": Decimal("-1.25"),
    "string": "héllo",
    "non-utf-8 string": NON_UTF8,
    "byte array": bytearray(b"\x00\x01\xff"),
    "timestamp": datetime(2024, 11, 26, 9, 12, 25, tzinfo=UTC),
    "timestamp in ms": MillisecondTimestamp(2024, 11, 26, 9, 12, 25, 123000, tzinfo=UTC),
    "timestamp after 9999": RawTimestamp(2**64 - 1),
    "void": None,
    "table": {"double": 0.1, "long": Int64(7), "inner": {"bytes": NON_UTF8, ESCAPED_NAME: 1}},
    "array": [Int64(1), 2.5, NON_UTF8, [Int8(1), Float32(0.5)], {"a": UInt8(1)}, None],
    ESCAPED_NAME: "a name that is not UTF-8",
    "k" * 255: "a name of 255 bytes",
}

# What the broker delivers: a quorum queue re-encodes the headers to add
# x-delivery-count (and a retry queue to add x-death), and RabbitMQ writes an unsigned
# 64-bit 'L' as a signed 'l', the same 64 bits. Every other type arrives as sent.
DELIVERED = {**SENT, "uint64": Int64(2**62)}


def wire(value: Any) -> bytes:
    """A header value as it goes on the wire: type code and bytes."""
    return encode_table({"k": value})[6:]


def assert_carried(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Every header of `want` is in `got` with the same type code and the same bytes
    (so doubles are equal bit for bit). Not in the same order: RabbitMQ sorts a table
    by name when it re-encodes one."""
    assert want.keys() <= got.keys()
    for key, value in want.items():
        assert (key, wire(got[key])) == (key, wire(value))
        # A plain float is sent as a double, and a double arrives as a Float64.
        assert type(got[key]) is (Float64 if type(value) is float else type(value))


# -- decoding what pamqp alone cannot ------------------------------------------


def sized(body: bytes) -> bytes:
    return Struct.integer.pack(len(body)) + body


@pytest.mark.parametrize(
    "table",
    [
        sized(b"\x02\xff\xfe" + b"S" + sized(b"v")),
        sized(b"\x01k" + b"F" + sized(b"\x01\xff" + b"b\x01")),
        sized(b"\x01k" + b"A" + sized(b"F" + sized(b"\x01\xff" + b"V"))),
        sized(b"\x01k" + b"T" + Struct.timestamp.pack(2**64 - 1)),
        sized(b"\x01k" + b"T" + Struct.timestamp.pack(253402300800000)),  # 10000-01-01
        sized(b"\x01k" + b"A" + sized(b"T" + Struct.timestamp.pack(2**63))),
    ],
    ids=["name", "nested name", "name in an array", "2**64-1", "year 10000", "in an array"],
)
def test_a_header_pamqp_could_not_decode_is_decoded_and_encoded_again_to_the_same_bytes(
    table: bytes,
) -> None:
    consumed, headers = decode.by_type(table, "table")  # as pamqp decodes properties

    assert consumed == len(table)
    assert isinstance(headers, dict)
    assert encode_table(headers) == table


def test_a_timestamp_after_9999_is_kept_as_its_count() -> None:
    headers = decode.field_table(sized(b"\x01k" + b"T" + Struct.timestamp.pack(2**63)))[1]

    assert headers == {"k": RawTimestamp(2**63)}
    assert repr(headers["k"]) == f"RawTimestamp({2**63})"


def test_properties_pamqp_could_not_decode_are_sent_again_as_they_came() -> None:
    sent = WireProperties(
        message_id=b"id-\xff".decode("utf-8", "surrogateescape"),
        message_type=b"type-\xfe".decode("utf-8", "surrogateescape"),
        timestamp=RawTimestamp(2**63 + 5),  # type: ignore[arg-type]
        headers={ESCAPED_NAME: 1},
    )
    data = sent.marshal()
    flags = Struct.short.unpack(data[:2])[0]

    received = commands.Basic.Properties()
    received.unmarshal(flags, data[2:])

    assert received.message_id == sent.message_id
    assert received.timestamp == RawTimestamp(2**63 + 5)
    assert WireProperties.from_properties(received).marshal() == data


def test_a_timestamp_property_in_milliseconds_stays_in_milliseconds() -> None:
    data = commands.Basic.Properties(timestamp=datetime(2024, 1, 1, tzinfo=UTC)).marshal()
    in_ms = data[:2] + Struct.timestamp.pack(1704067200123)

    received = commands.Basic.Properties()
    received.unmarshal(Struct.short.unpack(in_ms[:2])[0], in_ms[2:])

    assert type(received.timestamp) is MillisecondTimestamp
    assert WireProperties.from_properties(received).marshal() == in_ms


@pytest.mark.parametrize("value", [math.nan, math.inf, Float32(-math.inf), [1.0, math.nan]])
def test_a_nan_or_infinite_float_is_refused_before_rabbitmq_closes_the_connection_over_it(
    value: Any,
) -> None:
    # AMQP can carry them (so the codec can), RabbitMQ cannot: it answers a publish
    # carrying one by closing the whole connection with INTERNAL_ERROR.
    assert encode_table({"k": value})

    with pytest.raises(HeaderError, match=r"header 'k'.*a NaN or infinite float"):
        WireProperties(headers={"k": value}).marshal()


async def test_publishing_a_nan_header_raises_header_error_and_the_connection_stays_up(
    make_app: Callable[..., App], prefix: str
) -> None:
    app = make_app()

    class Note(TaskMessage, routing_key=f"{prefix}.note"):
        n: int

    @app.task(queue=f"{prefix}.notes")
    async def note(msg: Note) -> None: ...

    async with app:
        with pytest.raises(HeaderError, match=r"header 'score'.*NaN or infinite"):
            await app.publish(Note(n=1), headers={"score": math.nan})
        assert await app.publish(Note(n=2), headers={"score": 1.5})


# -- through a worker, the dead-letter queue and `dlq replay` -----------------------


@dataclass
class Run:
    attempt: int
    message_id: str
    headers: dict[str, Any]


class Recorder(Middleware):
    """Keeps the headers each handler run was delivered with."""

    def __init__(self) -> None:
        self.runs: list[Run] = []

    async def before_process(self, ctx: Context) -> None:
        self.runs.append(Run(ctx.attempt, ctx.message_id, dict(ctx.headers)))


@pytest.fixture
async def channel(broker_url: str) -> AsyncIterator[aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(broker_url)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        yield channel
    finally:
        await connection.close()


async def spy(channel: aiormq.abc.AbstractChannel, name: str, exchange: str, key: str) -> str:
    """A queue that gets a copy of what is published to `exchange` with `key`."""
    await channel.queue_declare(name, auto_delete=False)
    await channel.queue_bind(name, exchange, routing_key=key)
    return name


async def take(
    channel: aiormq.abc.AbstractChannel, queue: str, count: int
) -> list[commands.Basic.Properties]:
    taken: list[commands.Basic.Properties] = []

    async def enough() -> bool:
        message = await channel.basic_get(queue, no_ack=True)
        if isinstance(message.delivery, commands.Basic.GetOk):
            taken.append(message.header.properties)
        return len(taken) >= count

    await eventually(enough, timeout=20)
    return taken


async def test_every_header_reaches_the_retry_copy_the_dead_letter_and_the_replayed_copy_unchanged(
    broker_url: str,
    prefix: str,
    tmp_path: Path,
    app_module: Any,
    start_worker: Any,
    channel: aiormq.abc.AbstractChannel,
) -> None:
    m = app_module("failures_cli")  # fails until <record>.fixed exists; 3 attempts
    queue, exchange = m.name("jobs"), m.app.exchange
    recorder = Recorder()
    m.app.middleware.append(recorder)
    await start_worker(m.app)
    retries = await spy(
        channel, f"{prefix}.spy-retry", retry_exchange_name(exchange), retry_queue_name(queue, 50)
    )
    letters = await spy(channel, f"{prefix}.spy-dlq", dead_letter_exchange_name(exchange), queue)
    try:
        # Published by a client that is not rabbitworker, with every type RabbitMQ takes.
        await channel.basic_publish(
            b'{"n": 1}',
            exchange=exchange,
            routing_key=m.name("job"),
            properties=WireProperties(headers=SENT, message_id="m-1", delivery_mode=2),
            mandatory=True,
        )
        retry_copies = await take(channel, retries, 2)
        [dead_letter] = await take(channel, letters, 1)
    finally:
        await channel.queue_delete(retries)
        await channel.queue_delete(letters)

    # Each attempt is delivered with them, and each retry copy carries them on.
    assert [r.attempt for r in recorder.runs] == [1, 2, 3]
    for run in recorder.runs:
        assert_carried(run.headers, DELIVERED)
    for copy in retry_copies:
        assert_carried(copy.headers or {}, DELIVERED)
    assert [(r.headers or {})["x-attempt"] for r in retry_copies] == [2, 3]
    # So does the dead letter, next to its error headers.
    letter_headers = dead_letter.headers or {}
    assert_carried(letter_headers, DELIVERED)
    assert letter_headers["x-error-type"] == "ValueError"
    assert struct.pack(">d", letter_headers["double"]) == struct.pack(">d", 1732612345.123)

    async def cli(*args: str) -> Any:
        return await run_cli(
            "dlq", *args, "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=tmp_path / "handled.txt",
        )  # fmt: skip

    listed = await cli("list", "--json")
    table = await cli("list")
    assert (listed.code, listed.stderr, table.code, table.stderr) == (0, "", 0, "")
    [letter] = json.loads(listed.stdout)
    assert (letter["message_id"], letter["error_type"], letter["attempts"]) == (
        "m-1",
        "ValueError",
        3,
    )
    assert table.stdout.splitlines()[1].split()[:3] == ["m-1", m.name("job"), "3"]

    # Replayed to a fixed handler: the copy it gets carries the same headers again.
    Path(f"{tmp_path / 'handled.txt'}.fixed").touch()
    replayed = await cli("replay", "--id", "m-1")
    assert (replayed.code, replayed.stderr) == (0, "")
    assert replayed.stdout.strip() == f"replayed 1 message(s) to {queue}"
    await eventually(lambda: any(line[0] == "done" for line in read_record(tmp_path)))
    last = recorder.runs[-1]
    assert (len(recorder.runs), last.attempt, last.message_id) == (4, 1, "m-1")
    assert_carried(last.headers, DELIVERED)
    assert last.headers["x-replayed"] == 1  # replayed once
    assert not [k for k in last.headers if k.startswith(("x-error", "x-failed", "x-death"))]
    assert [line[0] for line in read_record(tmp_path)] == ["attempt"] * 4 + ["done"]
    emptied = await channel.queue_declare(dead_letter_queue_name(queue), passive=True)
    assert emptied.message_count == 0
