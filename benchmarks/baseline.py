"""The baseline: the same work written with plain aio-pika the way its documentation
teaches, one message per `await` with confirms in batches of concurrent publishes, a
consumer with prefetch 100 that acks each message, and hand-written direct reply-to RPC."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from .common import ECHO_KEY, JOB_KEY, Echo, EchoReply, Job, Tally, delete, job, prefill, unique

__all__ = [
    "consume",
    "consume_batch_acks",
    "publish",
    "rpc_concurrent",
    "rpc_latency",
]

ACK_EVERY = 25

PREFETCH = 100
REPLY_TO = "amq.rabbitmq.reply-to"


@asynccontextmanager
async def topology(
    url: str, queue_type: str, key: str
) -> AsyncIterator[tuple[AbstractRobustConnection, AbstractChannel, str, str]]:
    """A connection, a confirmed channel, and a topic exchange with one bound queue."""
    exchange, queue = unique("x"), unique("q")
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel()  # publisher confirms are on by default
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        q = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": queue_type})
        await q.bind(ex, key)
        yield connection, channel, exchange, queue
    finally:
        await delete(connection, queues=[queue], exchanges=[exchange])
        await connection.close()


async def publish(url: str, queue_type: str, count: int, batch: int) -> float:
    """Confirmed publishes per second, `batch` publishes in flight at a time."""
    async with topology(url, queue_type, JOB_KEY) as (_, channel, exchange_name, _q):
        exchange = await channel.get_exchange(exchange_name, ensure=False)

        async def one(n: int) -> None:
            body = job(n).model_dump_json().encode()
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, JOB_KEY)

        await asyncio.gather(*(one(n) for n in range(min(batch, 200))))  # warm-up
        started = time.perf_counter()
        for start in range(0, count, batch):
            await asyncio.gather(*(one(n) for n in range(start, min(count, start + batch))))
        return count / (time.perf_counter() - started)


async def consume(url: str, queue_type: str, count: int, delay: float = 0.0) -> float:
    """Messages per second, first to last handled, from a prefilled queue."""
    async with topology(url, queue_type, JOB_KEY) as (connection, _, _x, queue_name):
        await prefill(connection, queue_name, count)
        tally = Tally(count)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(queue_name, ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            Job.model_validate_json(message.body)
            if delay:
                await asyncio.sleep(delay)
            tally.hit()
            await message.ack()

        tag = await queue.consume(on_message)
        await tally.wait(timeout=60 + count * max(delay, 0.001))
        await queue.cancel(tag)
        await channel.close()
        return tally.rate


async def consume_batch_acks(url: str, queue_type: str, count: int) -> float:
    """The ceiling for a no-op consumer: messages per second with one `basic.ack`
    (`multiple=True`) for every 25 deliveries, and one for the rest at the end."""
    async with topology(url, queue_type, JOB_KEY) as (connection, _, _x, queue_name):
        await prefill(connection, queue_name, count)
        tally = Tally(count)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(queue_name, ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            Job.model_validate_json(message.body)
            tally.hit()
            # Handled in delivery order with nothing awaited before: every earlier
            # delivery has finished, so `multiple=True` acks nothing unfinished.
            if tally.count % ACK_EVERY == 0 or tally.count == count:
                await message.ack(multiple=True)

        tag = await queue.consume(on_message)
        await tally.wait(timeout=60 + count * 0.001)
        await queue.cancel(tag)
        await channel.close()
        return tally.rate


class Server:
    """An RPC server: replies on the default exchange, confirmed, then acks."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel

    async def on_request(self, message: AbstractIncomingMessage) -> None:
        request = Echo.model_validate_json(message.body)
        reply = aio_pika.Message(
            EchoReply(n=request.n).model_dump_json().encode(),
            content_type="application/json",
            correlation_id=message.correlation_id,
        )
        assert message.reply_to is not None
        await self.channel.default_exchange.publish(reply, message.reply_to, mandatory=False)
        await message.ack()


class Client:
    """An RPC client on direct reply-to: futures keyed by correlation id."""

    def __init__(self, channel: AbstractChannel, exchange: str) -> None:
        self.channel = channel
        self.exchange_name = exchange
        self.waiting: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

    async def start(self) -> None:
        self.exchange = await self.channel.get_exchange(self.exchange_name, ensure=False)
        replies = await self.channel.declare_queue(REPLY_TO, passive=True)
        await replies.consume(self.on_reply, no_ack=True)

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.waiting.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message)

    async def call(self, n: int) -> EchoReply:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.waiting[correlation_id] = future
        message = aio_pika.Message(
            Echo(n=n).model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
        )
        await self.exchange.publish(message, ECHO_KEY)
        reply = await asyncio.wait_for(future, 10)
        return EchoReply.model_validate_json(reply.body)


@asynccontextmanager
async def rpc_pair(url: str, queue_type: str) -> AsyncIterator[Client]:
    """A server and a client, each on a connection of its own."""
    async with topology(url, queue_type, ECHO_KEY) as (connection, _, exchange, queue):
        server_channel = await connection.channel()
        await server_channel.set_qos(prefetch_count=PREFETCH)
        server = Server(server_channel)
        requests = await server_channel.get_queue(queue, ensure=False)
        tag = await requests.consume(server.on_request)
        client_connection = await aio_pika.connect_robust(url)
        client = Client(await client_connection.channel(), exchange)
        await client.start()
        for n in range(20):  # warm-up
            await client.call(n)
        try:
            yield client
        finally:
            await client_connection.close()
            await requests.cancel(tag)
            await server_channel.close()


async def rpc_latency(url: str, queue_type: str, calls: int) -> list[float]:
    """Seconds per call, one call at a time."""
    async with rpc_pair(url, queue_type) as client:
        out = []
        for n in range(calls):
            started = time.perf_counter()
            await client.call(n)
            out.append(time.perf_counter() - started)
        return out


async def rpc_concurrent(url: str, queue_type: str, calls: int, in_flight: int) -> float:
    """Calls per second with `in_flight` calls outstanding at any time."""
    async with rpc_pair(url, queue_type) as client:
        todo = iter(range(calls))

        async def caller() -> None:
            for n in todo:
                await client.call(n)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        return calls / (time.perf_counter() - started)
