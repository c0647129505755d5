"""`MemoryTransport`: the `Transport` over a `MemoryBroker`, so the app's producer,
RPC client and worker run their real code paths without RabbitMQ."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from .._amqp.properties import through_the_wire
from ..errors import ConnectionFailed, PublishError
from ..topology import QueueSpec, Topology
from ..transport import Consumer, Delivery, OnChannelClosed, OnDelivery, QueueInfo
from ..wire import DIRECT_REPLY_TO, Properties
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
        queue = self.broker.queue(self.queue)
        taken: list[Delivery] = []
        while queue.ready and (limit is None or len(taken) < limit):
            taken.append(self.broker.take(queue, self.channel))
        return taken


class MemoryTransport:
    """A connection to a `MemoryBroker`: every publish is "confirmed" once routed,
    and mandatory publishing raises `UnroutableError` as RabbitMQ's return does."""

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

    def _check(self) -> None:
        if not self._open:
            raise ConnectionFailed("not connected to the broker")

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        if self._reply_to is not None:
            self.broker.reply_consumer(self._reply_to, None)
            self._reply_to = None
        channels, self._channels = self._channels, []
        for channel in channels:
            self.broker.close_channel(channel)

    async def declare(self, topology: Topology) -> None:
        self._check()
        for exchange in topology.exchanges:
            self.broker.declare_exchange(exchange)
        for queue in topology.queues:
            self.broker.declare_queue(queue)

    async def ensure_queue(self, spec: QueueSpec, *, force: bool = False) -> None:
        self._check()
        self.broker.declare_queue(spec)

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
        self.broker.publish(exchange, routing_key, body, properties, mandatory)

    async def consume(
        self,
        queue: str,
        on_delivery: OnDelivery,
        *,
        prefetch: int,
        on_closed: OnChannelClosed | None = None,
    ) -> Consumer:
        self._check()
        consumer = self.broker.consume(queue, on_delivery, prefetch)
        self._channels.append(consumer.channel)
        return consumer

    async def consume_replies(self, on_reply: OnDelivery, on_lost: Callable[[str], None]) -> None:
        self._check()
        self._reply_to = f"{DIRECT_REPLY_TO}.memory-{self._id}"
        self._on_lost = on_lost
        self.broker.reply_consumer(self._reply_to, on_reply)

    @contextlib.asynccontextmanager
    async def browse(self, queue: str) -> AsyncIterator[_Browser]:
        """Take messages unacked; closing the browser returns whatever was not acked."""
        self._check()
        self.broker.queue(queue)  # NOT_FOUND as the broker says it
        channel = MemoryChannel(f"browse {queue}")
        self._channels.append(channel)  # closed with the connection, too
        try:
            yield _Browser(self.broker, queue, channel)
        finally:
            if channel in self._channels:
                self._channels.remove(channel)
            self.broker.close_channel(channel)

    async def purge(self, queue: str) -> int:
        self._check()
        return self.broker.purge(queue)

    async def inspect(self, queue: str) -> QueueInfo | None:
        self._check()
        return self.broker.inspect(queue)
