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

from ..errors import BrokerError, ConnectionFailed
from ..topology import QueueSpec, Topology
from ..transport import (
    Consumer,
    Delivery,
    LockState,
    OnChannelClosed,
    OnConnectionChange,
    OnDelivery,
    QueueInfo,
)
from ..urls import BrokerURL, parse_broker_url
from ..wire import DIRECT_REPLY_TO, Properties
from .acks import AckBatcher
from .connection import OutageReport, connect, is_blocked, retry_across_reconnects
from .consume import AmqpConsumer, channel_of, to_delivery
from .declare import declare
from .errors import Op, broker_text, reraise, translate
from .failover import FailoverConnection
from .leader import BrokerLock, probe_lock, try_lock
from .publish import ConfirmedChannel

__all__ = ["AmqpTransport"]

T = TypeVar("T")

log = logging.getLogger("rabbitworker.connection")


class _BrowseSettler:
    """Acks of messages taken with basic.get: each on its own, at once."""

    async def ack(self, delivery: Delivery) -> None:
        try:
            await channel_of(delivery).basic_ack(delivery.tag)
        except Exception as exc:
            reraise(exc, Op.READ, f"ack message {delivery.message_id}")

    async def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        try:
            await channel_of(delivery).basic_nack(delivery.tag, requeue=requeue)
        except Exception as exc:
            reraise(exc, Op.READ, f"nack message {delivery.message_id}")


async def _answer(what: str, request: Awaitable[T], *, timeout: float) -> T:
    """`request`'s answer from the broker within `timeout` seconds; raises the
    rabbitworker error for whatever goes wrong."""
    try:
        async with asyncio.timeout(timeout):
            return await request
    except Exception as exc:
        error = translate(exc, Op.READ, what)
        if error is None:
            raise
        if isinstance(exc, TimeoutError):
            error = ConnectionFailed(f"{what}: the broker did not answer within {timeout:g} s")
        raise error from exc


class _Browser:
    def __init__(self, channel: aiormq.abc.AbstractChannel, queue: str, timeout: float) -> None:
        self.channel = channel
        self.queue = queue
        self.timeout = timeout
        self._settler = _BrowseSettler()

    async def take(self, limit: int | None = None) -> list[Delivery]:
        taken: list[Delivery] = []
        while limit is None or len(taken) < limit:
            message = await _answer(
                f"read {self.queue}",
                self.channel.basic_get(self.queue, no_ack=False),
                timeout=self.timeout,
            )
            if message.delivery is None or isinstance(message.delivery, aiormq.spec.Basic.GetEmpty):
                break
            taken.append(to_delivery(message, self.queue, self._settler))
        return taken


def _on_host(connection: AbstractRobustConnection, url: BrokerURL) -> str:
    if len(url.hosts) > 1 and isinstance(connection, FailoverConnection):
        return f"{connection.host} (hosts: {url.masked})"
    return url.masked


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
        self._listeners: list[OnConnectionChange] = []
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

    def on_connection_change(self, listener: OnConnectionChange) -> None:
        """Call `listener(False)` when the connection is lost, `(True)` when back."""
        self._listeners.append(listener)

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
        self._report = OutageReport(connection, self.url.masked, hosts=len(self.url.hosts))
        self._report.listeners = self._listeners  # those told before opening, too
        self._publisher = ConfirmedChannel(connection, channel, timeout=self.publish_timeout)
        log.info("connected to %s", _on_host(connection, self.url))

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
        concurrency: int | None = None,
    ) -> Consumer:
        connection = self.connection
        holders = prefetch if not concurrency else min(prefetch or concurrency, concurrency)

        async def start() -> AmqpConsumer:
            channel = connection.channel(publisher_confirms=False)
            await channel
            consumer = AmqpConsumer(queue, channel)
            self.acks.expect(queue, holders)
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

    async def acks_taken(self) -> None:
        """A round trip on each consuming channel: the broker handles a channel's
        frames in order, so by the answer it has taken the acks written before."""
        for channel in list(self._channels):
            if channel.is_closed:
                continue  # its unacked deliveries are going back anyway
            try:
                underlay = await channel.get_underlay_channel()
                await _answer(
                    "wait for acks",
                    underlay.exchange_declare("amq.direct", passive=True),
                    timeout=self.publish_timeout,
                )
            except Exception as exc:  # lost meanwhile: what it held goes back anyway
                log.debug("waiting for the acks on a consuming channel: %s", exc)

    @contextlib.asynccontextmanager
    async def browse(self, queue: str) -> AsyncIterator[_Browser]:
        """Take messages unacked; closing the channel returns whatever was not acked.

        Each request waits for the broker's answer for up to `publish_timeout`."""
        channel = await self._raw_channel(f"read {queue}")
        try:
            yield _Browser(channel, queue, self.publish_timeout)
        finally:
            if not channel.is_closed:
                # A broker that stopped answering must not hold up the caller here.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.publish_timeout):
                        await channel.close()

    async def _raw_channel(self, what: str) -> aiormq.abc.AbstractChannel:
        """A plain channel on the current underlying connection, not restored after a
        reconnect (what browsing wants); during an outage, once the connection is back."""
        connection, timeout = self.connection, self.publish_timeout
        try:
            async with asyncio.timeout(timeout):
                await connection.ready()
        except TimeoutError:
            raise ConnectionFailed(
                f"{what}: the connection to the broker was lost and not back within {timeout:g} s"
            ) from None
        underlay = connection.transport
        if underlay is None:  # lost again meanwhile
            raise ConnectionFailed(f"{what}: the connection to the broker was lost")
        return await _answer(what, underlay.connection.channel(), timeout=timeout)

    async def take_lock(self, name: str) -> BrokerLock | None:
        """Hold the exclusive queue `name` on this connection, or None when another
        connection holds it (see `rabbitworker._amqp.leader`)."""
        channel = await self._raw_channel(f"take the lock {name}")
        return await try_lock(channel, name, self.publish_timeout)

    async def probe_lock(self, name: str) -> LockState:
        """Whether a connection holds the lock `name`, without taking it."""
        channel = await self._raw_channel(f"look at the lock {name}")
        return await probe_lock(channel, name, self.publish_timeout)

    async def purge(self, queue: str) -> int:
        async with self.browse(queue) as browser:
            result = await _answer(
                f"purge {queue}", browser.channel.queue_purge(queue), timeout=self.publish_timeout
            )
            return int(getattr(result, "message_count", 0) or 0)

    async def inspect(self, queue: str) -> QueueInfo | None:
        async with self.browse(queue) as browser:
            try:
                ok = await _answer(
                    f"inspect {queue}",
                    browser.channel.queue_declare(queue, passive=True),
                    timeout=self.publish_timeout,
                )
            except BrokerError as exc:
                if isinstance(exc.__cause__, aiormq.exceptions.ChannelNotFoundEntity):
                    return None
                raise
            return QueueInfo(queue, int(ok.message_count or 0), int(ok.consumer_count or 0))
