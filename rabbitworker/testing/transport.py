"""`MemoryTransport`: the `Transport` over a `MemoryBroker`, so the app's producer,
RPC client and worker run their real code paths without RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from .._amqp.properties import through_the_wire
from ..errors import ConnectionFailed, PublishError
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
from ..wire import DIRECT_REPLY_TO, Properties
from .locks import MemoryLock
from .node import MemoryBroker
from .queues import MemoryChannel

__all__ = ["MemoryTransport"]

_ids = itertools.count(1)


class _Browser:
    def __init__(self, broker: MemoryBroker, queue: str, channel: MemoryChannel) -> None:
        self.broker = broker
        self.queue = queue
        self.channel = channel

    async def take(self, limit: int | None = None) -> list[Delivery]:
        return await self.broker.at_home(lambda: self._take(limit))

    def _take(self, limit: int | None) -> list[Delivery]:
        queue = self.broker.queue(self.queue)
        taken: list[Delivery] = []
        while queue.ready and (limit is None or len(taken) < limit):
            taken.append(self.broker.take(queue, self.channel))
        return taken


class MemoryTransport:
    """A connection to a `MemoryBroker`: every publish is "confirmed" once routed,
    and mandatory publishing raises `UnroutableError` as RabbitMQ's return does.
    Usable from another event loop than the broker's (the blocking client's)."""

    def __init__(self, broker: MemoryBroker, *, name: str = "memory") -> None:
        self.broker = broker
        self.name = name
        self._id = next(_ids)
        self._open = False
        self._channels: list[MemoryChannel] = []
        self._reply_to: str | None = None
        self._on_lost: Callable[[str], None] | None = None

    @property
    def description(self) -> str:
        return f"memory://{self.name}"

    @property
    def connected(self) -> bool:
        return self._open

    @property
    def blocked(self) -> bool:
        """Never: the in-memory broker has no memory or disk alarms."""
        return False

    def on_connection_change(self, listener: OnConnectionChange) -> None:
        """Never called: the in-memory connection is not lost, only closed."""

    def _check(self) -> None:
        if not self._open:
            raise ConnectionFailed("not connected to the broker")

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        reply_to, self._reply_to = self._reply_to, None
        channels, self._channels = self._channels, []

        def close() -> None:
            if reply_to is not None:
                self.broker.reply_consumer(reply_to, None)
            for channel in channels:
                self.broker.close_channel(channel)
            self.broker.locks.drop_all(self._id)

        self.broker.soon_at_home(close)

    async def declare(self, topology: Topology) -> None:
        self._check()

        def declare() -> None:
            for exchange in topology.exchanges:
                self.broker.declare_exchange(exchange)
            for queue in topology.queues:
                self.broker.declare_queue(queue)

        await self.broker.at_home(declare)

    async def ensure_queue(self, spec: QueueSpec, *, force: bool = False) -> None:
        self._check()
        await self.broker.at_home(lambda: self.broker.declare_queue(spec))

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
        self._check()
        # Encoded and decoded as on the wire: the same header types, the same HeaderError.
        properties = through_the_wire(properties)
        if properties.reply_to == DIRECT_REPLY_TO:
            if self._reply_to is None:
                raise PublishError(
                    "PRECONDITION_FAILED - fast reply consumer does not exist (consume "
                    "replies before sending a request)"
                )
            # As RabbitMQ does: the reply-to names this connection's reply consumer.
            properties = replace(properties, reply_to=self._reply_to)
        sent = properties
        await self.broker.at_home(
            lambda: self.broker.publish(exchange, routing_key, body, sent, mandatory)
        )

    async def consume(
        self,
        queue: str,
        on_delivery: OnDelivery,
        *,
        prefetch: int,
        on_closed: OnChannelClosed | None = None,
        concurrency: int | None = None,  # acks are settled at once: nothing to size
    ) -> Consumer:
        self._check()
        consumer = await self.broker.at_home(
            lambda: self.broker.consume(queue, on_delivery, prefetch)
        )
        self._channels.append(consumer.channel)
        return consumer

    async def consume_replies(self, on_reply: OnDelivery, on_lost: Callable[[str], None]) -> None:
        self._check()
        name = self._reply_to = f"{DIRECT_REPLY_TO}.memory-{self._id}"
        self._on_lost = on_lost
        here = asyncio.get_running_loop()

        async def on_reply_here(delivery: Delivery) -> None:
            # Replies come from the broker's loop; the caller waits on its own.
            async def deliver() -> None:
                await on_reply(delivery)

            if here is asyncio.get_running_loop():
                await deliver()
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(deliver(), here))

        await self.broker.at_home(lambda: self.broker.reply_consumer(name, on_reply_here))

    @contextlib.asynccontextmanager
    async def browse(self, queue: str) -> AsyncIterator[_Browser]:
        """Take messages unacked; closing the browser returns whatever was not acked."""
        self._check()
        await self.broker.at_home(lambda: self.broker.queue(queue))  # NOT_FOUND, as said
        channel = MemoryChannel(f"browse {queue}")
        self._channels.append(channel)  # closed with the connection, too
        try:
            yield _Browser(self.broker, queue, channel)
        finally:
            if channel in self._channels:
                self._channels.remove(channel)
            self.broker.soon_at_home(lambda: self.broker.close_channel(channel))

    async def acks_taken(self) -> None:
        """Acks reach the in-memory broker as they are made: nothing to wait for."""
        self._check()

    async def purge(self, queue: str) -> int:
        self._check()
        return await self.broker.at_home(lambda: self.broker.purge(queue))

    async def inspect(self, queue: str) -> QueueInfo | None:
        self._check()
        return await self.broker.at_home(lambda: self.broker.inspect(queue))

    async def take_lock(self, name: str) -> MemoryLock | None:
        """Hold the lock `name` until released or this connection closes; None when
        another connection holds it."""
        self._check()
        return await self.broker.at_home(lambda: self.broker.locks.take(name, self._id))

    async def probe_lock(self, name: str) -> LockState:
        self._check()
        return await self.broker.at_home(lambda: self.broker.locks.probe(name))
