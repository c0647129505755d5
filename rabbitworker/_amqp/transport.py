"""`AmqpTransport`: the `Transport` over RabbitMQ. One robust connection, a confirmed
publishing channel (which also declares the topology and holds the RPC reply
consumer) and a channel per consumed queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from ..errors import ConnectionFailed
from ..topology import QueueSpec, Topology
from ..transport import Consumer, Delivery, OnChannelClosed, OnDelivery, QueueInfo
from ..urls import BrokerURL, parse_broker_url
from ..wire import DIRECT_REPLY_TO, Properties
from .acks import AckBatcher
from .connection import OutageReport, connect, retry_across_reconnects
from .consume import AmqpConsumer, to_delivery
from .declare import declare
from .errors import Op, broker_text, translate
from .publish import ConfirmedChannel, is_blocked

__all__ = ["AmqpTransport"]

T = TypeVar("T")

log = logging.getLogger("rabbitworker.connection")


class _BrowseSettler:
    """Acks of messages taken with basic.get: each on its own, at once."""

    async def ack(self, delivery: Delivery) -> None:
        await delivery.channel.basic_ack(delivery.tag)

    async def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        await delivery.channel.basic_nack(delivery.tag, requeue=requeue)


class _Browser:
    def __init__(self, channel: aiormq.abc.AbstractChannel, queue: str) -> None:
        self.channel = channel
        self.queue = queue
        self._settler = _BrowseSettler()

    async def take(self, limit: int | None = None) -> list[Delivery]:
        taken: list[Delivery] = []
        while limit is None or len(taken) < limit:
            try:
                message = await self.channel.basic_get(self.queue, no_ack=False)
            except Exception as exc:
                _raise(exc, Op.READ, f"read {self.queue}")
            if message.delivery is None or isinstance(message.delivery, aiormq.spec.Basic.GetEmpty):
                break
            taken.append(to_delivery(message, self.queue, self._settler))
        return taken


def _raise(exc: BaseException, op: Op, what: str) -> Any:
    error = translate(exc, op, what)
    if error is None:
        raise exc
    raise error from exc


class AmqpTransport:
    """Connects to the broker(s) of `url` when opened."""

    def __init__(
        self,
        url: str | BrokerURL,
        *,
        connect_timeout: float,
        publish_timeout: float,
        heartbeat: int,
        name: str,
    ) -> None:
        self.url = url if isinstance(url, BrokerURL) else parse_broker_url(url)
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.heartbeat = heartbeat
        self.name = name
        self.acks = AckBatcher()
        self._connection: AbstractRobustConnection | None = None
        self._publisher: ConfirmedChannel | None = None
        self._report: OutageReport | None = None
        self._channels: list[AbstractRobustChannel] = []

    @property
    def description(self) -> str:
        return self.url.masked

    @property
    def connected(self) -> bool:
        """Connected now (false during an outage)."""
        return self._report is not None and self._report.connected

    @property
    def blocked(self) -> bool:
        """The broker blocks publishers (a memory or disk alarm)."""
        return self._connection is not None and is_blocked(self._connection)

    def on_connection_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(False)` when the connection is lost, `(True)` when back."""
        if self._report is not None:
            self._report.listeners.append(listener)

    async def open(self) -> None:
        connection = await connect(
            self.url,
            timeout=self.connect_timeout,
            heartbeat=self.heartbeat,
            name=self.name,
        )
        try:
            channel = await self._setup(
                connection,
                "open the publishing channel",
                lambda: connection.channel(publisher_confirms=True, on_return_raises=True),
            )
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._report = OutageReport(connection, self.url.masked)
        self._publisher = ConfirmedChannel(connection, channel, timeout=self.publish_timeout)
        log.info("connected to %s", self.url.masked)

    async def _setup(
        self, connection: AbstractRobustConnection, what: str, step: Callable[[], Awaitable[T]]
    ) -> T:
        return await retry_across_reconnects(connection, what, step, timeout=self.connect_timeout)

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise ConnectionFailed("not connected to the broker")
        return self._connection

    @property
    def publisher(self) -> ConfirmedChannel:
        if self._publisher is None:
            raise ConnectionFailed("not connected to the broker")
        return self._publisher

    async def close(self) -> None:
        connection, publisher, report = self._connection, self._publisher, self._report
        self._connection, self._publisher = None, None
        if report is not None:
            report.closing = True
        if publisher is not None:
            publisher.close()
        self._channels.clear()
        if connection is not None:
            await connection.close()

    async def declare(self, topology: Topology) -> None:
        channel = self.publisher.channel
        await self._setup(
            self.connection, "declare the topology", lambda: declare(channel, topology)
        )

    async def ensure_queue(self, spec: QueueSpec, *, force: bool = False) -> None:
        await self.publisher.ensure_queue(spec, force=force)

    async def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
        resend: bool = True,
    ) -> None:
        await self.publisher.send(
            exchange, routing_key, body, properties, mandatory=mandatory, resend=resend
        )

    async def consume(
        self,
        queue: str,
        on_delivery: OnDelivery,
        *,
        prefetch: int,
        on_closed: OnChannelClosed | None = None,
    ) -> Consumer:
        connection = self.connection

        async def start() -> AmqpConsumer:
            channel = connection.channel(publisher_confirms=False)
            await channel
            consumer = AmqpConsumer(queue, channel)
            await consumer.start(on_delivery, self.acks, prefetch=prefetch, on_closed=on_closed)
            self._channels.append(channel)
            return consumer

        return await self._setup(connection, f"consume {queue}", start)

    async def consume_replies(self, on_reply: OnDelivery, on_lost: Callable[[str], None]) -> None:
        channel = self.publisher.channel

        def closed(_: Any, exc: BaseException | None) -> None:
            on_lost(broker_text(exc) if exc and not isinstance(exc, asyncio.CancelledError) else "")

        async def start() -> None:
            consumer = AmqpConsumer(DIRECT_REPLY_TO, channel)
            await consumer.start(
                on_reply, self.acks, prefetch=0, on_closed=None, no_ack=True, passive=True
            )

        channel.close_callbacks.add(closed)
        await self._setup(self.connection, "consume RPC replies", start)

    @contextlib.asynccontextmanager
    async def browse(self, queue: str) -> AsyncIterator[_Browser]:
        """Take messages unacked; closing the channel returns whatever was not acked."""
        try:
            channel = await self.connection.transport.connection.channel()  # type: ignore[union-attr]
        except Exception as exc:
            _raise(exc, Op.READ, f"read {queue}")
        try:
            yield _Browser(channel, queue)
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def purge(self, queue: str) -> int:
        async with self.browse(queue) as browser:
            try:
                result = await browser.channel.queue_purge(queue)
            except Exception as exc:
                _raise(exc, Op.READ, f"purge {queue}")
            return int(getattr(result, "message_count", 0) or 0)

    async def inspect(self, queue: str) -> QueueInfo | None:
        async with self.browse(queue) as browser:
            try:
                ok = await browser.channel.queue_declare(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            except Exception as exc:
                _raise(exc, Op.READ, f"inspect {queue}")
            return QueueInfo(queue, int(ok.message_count or 0), int(ok.consumer_count or 0))
