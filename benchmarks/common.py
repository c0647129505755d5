"""What both sides of every benchmark share: the message types, unique names,
prefilling a queue, counting handled messages, and deleting what a benchmark made."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

import aio_pika
from pydantic import BaseModel

from rabbitworker import TaskMessage
from rabbitworker.wire import message_properties

__all__ = [
    "ECHO_KEY",
    "JOB_KEY",
    "Echo",
    "EchoReply",
    "Job",
    "Tally",
    "delete",
    "job",
    "prefill",
    "queue_ready",
    "unique",
    "wire_message",
]

JOB_KEY = "bench.job"
ECHO_KEY = "bench.echo"
PAYLOAD = "x" * 100  # a small, realistic body: ids and a little text


class Job(TaskMessage, routing_key=JOB_KEY):
    n: int
    user_id: int
    note: str


class EchoReply(BaseModel):
    n: int


class Echo(TaskMessage[EchoReply], routing_key=ECHO_KEY):
    n: int


def job(n: int) -> Job:
    return Job(n=n, user_id=n * 7, note=PAYLOAD)


def unique(kind: str) -> str:
    """A name no other benchmark (or test) uses."""
    return f"rwb-{uuid.uuid4().hex[:10]}.{kind}"


class Tally:
    """Counts handled messages: first and last handling time, and an event at `expected`."""

    __slots__ = ("count", "done", "expected", "first", "last")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self.done.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"only {self.count} of {self.expected} messages handled within {timeout:g} s"
            ) from None

    @property
    def rate(self) -> float:
        """Messages per second from the first to the last one handled."""
        span = self.last - self.first
        return (self.count - 1) / span if span > 0 else float("nan")


def wire_message(body: bytes, routing_key: str) -> aio_pika.Message:
    """An aio-pika message in rabbitworker's wire format (for publishing raw)."""
    p = message_properties(routing_key)
    return aio_pika.Message(
        body,
        content_type=p.content_type,
        type=p.type,
        message_id=p.message_id,
        timestamp=p.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=p.headers,
    )


async def prefill(
    connection: aio_pika.abc.AbstractConnection, queue: str, count: int, batch: int = 1000
) -> None:
    """Put `count` jobs in rabbitworker's wire format into `queue`, confirmed."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        exchange = channel.default_exchange
        for start in range(0, count, batch):
            await asyncio.gather(
                *(
                    exchange.publish(
                        wire_message(job(n).model_dump_json().encode(), JOB_KEY),
                        queue,
                    )
                    for n in range(start, min(count, start + batch))
                )
            )
    finally:
        await channel.close()


async def queue_ready(connection: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """Messages ready in a queue (unacknowledged ones not counted)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def delete(
    connection: aio_pika.abc.AbstractConnection,
    *,
    queues: Iterable[str] = (),
    exchanges: Iterable[str] = (),
) -> None:
    """Delete queues and exchanges, ignoring those already gone."""
    for kind, names in (("queue", queues), ("exchange", exchanges)):
        for name in names:
            channel = await connection.channel()
            try:
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except aio_pika.exceptions.AMQPError:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
