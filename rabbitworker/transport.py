"""The transport: everything the app, the worker and the tools ask of a broker, as
one small interface. `rabbitworker._amqp` implements it over RabbitMQ (the only code
that touches aio-pika); `rabbitworker.testing` implements it in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from .topology import QueueSpec, Topology
from .wire import Properties

__all__ = [
    "Browser",
    "Consumer",
    "Delivery",
    "OnChannelClosed",
    "OnDelivery",
    "QueueInfo",
    "Settler",
    "Transport",
]


class Settler(Protocol):
    """Acknowledges deliveries on the channel they arrived on."""

    async def ack(self, delivery: Delivery) -> None: ...

    async def nack(self, delivery: Delivery, *, requeue: bool) -> None: ...


@dataclass(slots=True, eq=False)
class Delivery:
    """A message as the broker delivered it, until it is acked or nacked.

    `channel` identifies the channel it arrived on: its ack can only go there, and
    when that channel closes the broker delivers it again.
    """

    body: bytes
    properties: Properties
    queue: str
    routing_key: str
    exchange: str
    redelivered: bool
    tag: int
    channel: Any
    settler: Settler

    @property
    def message_id(self) -> str:
        return self.properties.message_id or ""

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers

    @property
    def type(self) -> str:
        """The message type: the `type` property, or the routing key when it has none."""
        return self.properties.type or self.routing_key

    async def ack(self) -> None:
        await self.settler.ack(self)

    async def nack(self, *, requeue: bool = True) -> None:
        await self.settler.nack(self, requeue=requeue)


OnDelivery = Callable[[Delivery], Awaitable[None]]
# Called when a consumer's channel closed: the channel, the broker's reason (or the
# connection's), and whether the broker closed that channel on purpose.
OnChannelClosed = Callable[[Any, str, bool], None]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue's depth and consumers, as a passive declare reports them."""

    name: str
    messages: int
    consumers: int


class Consumer(Protocol):
    """A running consumer; `cancel()` stops deliveries (unacked ones stay owed)."""

    queue: str

    async def cancel(self) -> None: ...


class Browser(Protocol):
    """Messages taken from a queue unacknowledged; closing returns the rest."""

    async def take(self, limit: int | None = None) -> list[Delivery]: ...


class Transport(Protocol):
    """A connection to a broker with a confirmed publishing channel."""

    @property
    def description(self) -> str:
        """Where it connects, safe to print (no password)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def declare(self, topology: Topology) -> None: ...

    async def ensure_queue(self, spec: QueueSpec, *, force: bool = False) -> None:
        """Declare an expiring queue (retry, delay) unless declared recently."""
        ...

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
        """Publish and wait for the broker's confirm; raises `PublishError` kinds or
        `ConnectionFailed`. `resend=False`: no new attempt after a reconnect."""
        ...

    async def consume(
        self,
        queue: str,
        on_delivery: OnDelivery,
        *,
        prefetch: int,
        on_closed: OnChannelClosed | None = None,
        concurrency: int | None = None,
    ) -> Consumer:
        """Consume `queue`; `concurrency`, the handlers that can run at once, bounds
        how many finished deliveries an ack may wait for."""
        ...

    async def consume_replies(self, on_reply: OnDelivery, on_lost: Callable[[str], None]) -> None:
        """Start the RPC reply consumer on the publishing channel."""
        ...

    async def acks_taken(self) -> None:
        """Return once the broker has taken every ack already written on a consuming
        channel, so that a process that dies next cannot have them returned."""
        ...

    def browse(self, queue: str) -> AbstractAsyncContextManager[Browser]: ...

    async def purge(self, queue: str) -> int: ...

    async def inspect(self, queue: str) -> QueueInfo | None:
        """The queue's counts, or None when it does not exist."""
        ...
