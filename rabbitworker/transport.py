"""The transport: everything the app, the worker and the tools ask of a broker, as
one small interface. `rabbitworker._amqp` implements it over RabbitMQ (the only code
that touches aio-pika); `rabbitworker.testing` implements it in memory.

Whatever the package asks of a broker is declared here, so that a second transport
knows all it owes: nothing is looked up with `getattr` on a transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .topology import QueueSpec, Topology
from .wire import Properties

__all__ = [
    "Browser",
    "Channel",
    "Consumer",
    "Delivery",
    "Lock",
    "LockState",
    "OnChannelClosed",
    "OnConnectionChange",
    "OnDelivery",
    "QueueInfo",
    "Settler",
    "Transport",
]

# Whether a connection holds a lock: "held" (another connection, or this one),
# "free" (none does).
LockState = Literal["held", "free"]
# Called with False when the connection is lost, True when it is back.
OnConnectionChange = Callable[[bool], None]


class Channel(Protocol):
    """The channel a delivery arrived on: its ack can only go there, and once it is
    closed the broker delivers again what it held unacknowledged."""

    @property
    def is_closed(self) -> bool: ...


class Settler(Protocol):
    """Acknowledges deliveries on the channel they arrived on; raises when that
    channel is closed or the broker refuses the tag (what it raises is the
    transport's own: callers that go on after a failed ack catch any `Exception`)."""

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
    channel: Channel
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

    @property
    def channel_closed(self) -> bool:
        """Its channel is closed: its ack can no longer be sent, and the broker
        delivers it again."""
        return self.channel.is_closed

    async def ack(self) -> None:
        await self.settler.ack(self)

    async def nack(self, *, requeue: bool = True) -> None:
        await self.settler.nack(self, requeue=requeue)


OnDelivery = Callable[[Delivery], Awaitable[None]]
# Called when a consumer's channel closed: the channel, the broker's reason (or the
# connection's), and whether the broker closed that channel on purpose.
OnChannelClosed = Callable[[Channel, str, bool], None]


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
    """Messages taken from a queue unacknowledged (acked one by one by the caller);
    closing the browser returns the rest to the queue."""

    async def take(self, limit: int | None = None) -> list[Delivery]:
        """Up to `limit` messages (all that are ready when None), in queue order."""
        ...


class Lock(Protocol):
    """A lock held on the broker by one connection, lost when that connection goes
    (closed, or cut off past its heartbeat timeout)."""

    @property
    def held(self) -> bool: ...

    async def wait_lost(self) -> None:
        """Return once the lock is lost or released."""
        ...

    async def release(self, timeout: float) -> None:
        """Give the lock up, waiting at most `timeout` seconds for the broker."""
        ...


class Transport(Protocol):
    """A connection to a broker with a confirmed publishing channel."""

    @property
    def description(self) -> str:
        """Where it connects, safe to print (no password)."""
        ...

    @property
    def connected(self) -> bool:
        """Connected now: opened, not closed, and not in an outage."""
        ...

    @property
    def blocked(self) -> bool:
        """The broker blocks publishers now (a memory or disk alarm)."""
        ...

    def on_connection_change(self, listener: OnConnectionChange) -> None:
        """Call `listener(False)` when the connection is lost, `(True)` when it is
        back (not for `open()` and `close()` themselves)."""
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

    async def take_lock(self, name: str) -> Lock | None:
        """Hold the lock `name` on this connection, or None when another connection
        holds it; raises `BrokerError` kinds when the broker cannot be asked."""
        ...

    async def probe_lock(self, name: str) -> LockState:
        """Whether some connection holds the lock `name`, without taking it."""
        ...
