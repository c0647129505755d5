"""`MemoryBroker`: RabbitMQ's routing and queueing in one process, on a virtual
clock. Topic, direct, headers and the default exchange; mandatory publishing;
queues with TTL, a length limit, dead-lettering (with `x-death`) and the quorum
delivery limit; consumers with prefetch; direct reply-to; locks (what exclusive
queues give the beat). Time moves only when told to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import BrokerError, PublishError, UnroutableError
from ..topology import ExchangeSpec, QueueSpec, topic_matches
from ..transport import Delivery, OnDelivery, QueueInfo, Settler
from ..wire import DIRECT_REPLY_TO, Properties
from .locks import MemoryLocks
from .queues import MemoryChannel, MemoryQueue, Message, as_sent, with_death

__all__ = ["MemoryBroker", "MemoryConsumer"]

log = logging.getLogger("rabbitworker.testing")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Binding:
    exchange: str
    key: str
    queue: str
    arguments: tuple[tuple[str, Any], ...] = ()


class MemoryConsumer:
    """A consumer of one queue on its own channel, with its prefetch."""

    def __init__(
        self, broker: MemoryBroker, queue: str, on_delivery: OnDelivery, prefetch: int
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.on_delivery = on_delivery
        self.prefetch = prefetch
        self.channel = MemoryChannel(f"consume {queue}")
        self.in_flight = 0

    @property
    def has_room(self) -> bool:
        return self.prefetch == 0 or self.in_flight < self.prefetch

    async def cancel(self) -> None:
        """Stop deliveries; what it holds unacknowledged stays owed to its channel."""
        self.broker.cancel(self)


class _Settler:
    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def ack(self, delivery: Delivery) -> None:
        await self.broker.at_home(lambda: self.broker.settle(delivery, requeue=None))

    async def nack(self, delivery: Delivery, *, requeue: bool) -> None:
        await self.broker.at_home(lambda: self.broker.settle(delivery, requeue=requeue))


def _headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    wanted = {k: v for k, v in arguments.items() if not k.startswith("x-")}
    hits = [headers.get(k) == v for k, v in wanted.items()]
    return any(hits) if arguments.get("x-match") == "any" else all(hits)


class MemoryBroker:
    """One in-memory broker node that transports (and so apps) share.

    Its state lives on one event loop, `loop` (set by `TestBroker`): a transport on
    another loop (the blocking client's thread) hands each operation over to it.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.now = 0.0  # virtual seconds since the broker started
        self.exchanges: dict[str, str] = {"": "direct"}
        self.queues: dict[str, MemoryQueue] = {}
        self.bindings: list[_Binding] = []
        self.dropped: list[Message] = []  # dead letters with nowhere to go, as RabbitMQ drops them
        self.settler: Settler = _Settler(self)
        self.locks = MemoryLocks()
        self._reply_channel = MemoryChannel("direct reply-to")  # never closed
        self._replies: dict[str, OnDelivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tags = 0
        self._changed = asyncio.Event()

    async def at_home(self, operation: Callable[[], T]) -> T:
        """Run `operation` on the broker's loop, from whichever loop calls."""
        home = self.loop
        if home is None or home is asyncio.get_running_loop():
            return operation()

        async def run() -> T:
            return operation()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), home))

    def soon_at_home(self, operation: Callable[[], None]) -> None:
        """Run `operation` on the broker's loop without waiting for it (for closing,
        which the broker's loop may itself be waiting for)."""
        home = self.loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if home is None or home is here:
            operation()
        elif not home.is_closed():
            home.call_soon_threadsafe(operation)

    # -- topology -------------------------------------------------------------

    def declare_exchange(self, spec: ExchangeSpec) -> None:
        """Declare an exchange; raises `BrokerError` when it exists with another type."""
        kind = self.exchanges.setdefault(spec.name, spec.type)
        if kind != spec.type:
            raise BrokerError(
                f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange {spec.name!r}: "
                f"received {spec.type!r} but current is {kind!r}"
            )

    def declare_queue(self, spec: QueueSpec) -> None:
        """Declare a queue and its bindings; raises `BrokerError` when it exists with
        other arguments (PRECONDITION_FAILED, as RabbitMQ does)."""
        queue = self.queues.get(spec.name)
        if queue is None:
            self.queues[spec.name] = MemoryQueue(spec.name, spec.arguments)
        elif queue.arguments != spec.arguments:
            raise BrokerError(
                f"PRECONDITION_FAILED - inequivalent arguments for queue {spec.name!r}: "
                f"{queue.arguments} declared, {spec.arguments} asked"
            )
        arguments = tuple(sorted((spec.binding_arguments or {}).items()))
        for exchange, key in spec.bindings:
            if exchange not in self.exchanges:
                raise BrokerError(f"NOT_FOUND - no exchange {exchange!r} in vhost '/'")
            binding = _Binding(exchange, key, spec.name, arguments)
            if binding not in self.bindings:
                self.bindings.append(binding)

    def queue(self, name: str) -> MemoryQueue:
        queue = self.queues.get(name)
        if queue is None:
            raise BrokerError(f"NOT_FOUND - no queue {name!r} in vhost '/'")
        return queue

    def inspect(self, name: str) -> QueueInfo | None:
        queue = self.queues.get(name)
        if queue is None:
            return None
        return QueueInfo(name, len(queue.ready), len(queue.consumers))

    def purge(self, name: str) -> int:
        queue = self.queue(name)
        count = len(queue.ready)
        queue.ready.clear()
        return count

    # -- routing --------------------------------------------------------------

    def route(self, exchange: str, routing_key: str, headers: dict[str, Any]) -> list[str]:
        """The queues a message published to `exchange` with `routing_key` reaches."""
        kind = self.exchanges.get(exchange)
        if kind is None:
            raise PublishError(f"NOT_FOUND - no exchange {exchange!r} in vhost '/'")
        if exchange == "":
            return [routing_key] if routing_key in self.queues else []
        found: list[str] = []
        for b in self.bindings:
            if b.exchange != exchange or b.queue in found:
                continue
            if kind == "topic":
                hit = topic_matches(b.key, routing_key)
            elif kind == "headers":
                hit = _headers_match(dict(b.arguments), headers)
            else:
                hit = b.key == routing_key
            if hit:
                found.append(b.queue)
        return found

    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties, mandatory: bool
    ) -> None:
        """Route and enqueue a copy in each queue reached; raises `UnroutableError` for
        a mandatory message no queue takes."""
        if exchange == "" and routing_key.startswith(DIRECT_REPLY_TO + "."):
            self._reply(routing_key, body, properties, mandatory)
            return
        targets = self.route(exchange, routing_key, properties.headers)
        if not targets and mandatory:
            raise UnroutableError(
                f"publish to {exchange or '(default exchange)'!r}: no queue is bound for "
                f"routing key {routing_key!r}"
            )
        message = Message(body, as_sent(properties), exchange, routing_key)
        self._enqueue(message, targets)

    def _enqueue(self, message: Message, targets: Iterable[str]) -> None:
        for name in targets:
            queue = self.queues[name]
            for over in queue.put(message.copy(), self.now):
                self._dead_letter(queue, over, "maxlen")
            self._dispatch(queue)
        self.touch()

    def _dead_letter(self, queue: MemoryQueue, message: Message, reason: str) -> None:
        exchange = queue.dead_letter_exchange
        if exchange is None or exchange not in self.exchanges:
            self.dropped.append(message)
            return
        key = queue.dead_letter_routing_key or message.routing_key
        properties = with_death(message, queue.name, reason)
        targets = self.route(exchange, key, properties.headers)
        if not targets:
            self.dropped.append(message)
            return
        self._enqueue(Message(message.body, properties, exchange, key), targets)

    # -- consuming ------------------------------------------------------------

    def consume(self, queue: str, on_delivery: OnDelivery, prefetch: int) -> MemoryConsumer:
        consumer = MemoryConsumer(self, queue, on_delivery, prefetch)
        self.queue(queue).consumers.append(consumer)
        self._dispatch(self.queues[queue])
        return consumer

    def cancel(self, consumer: MemoryConsumer) -> None:
        queue = self.queues.get(consumer.queue)
        if queue is not None and consumer in queue.consumers:
            queue.consumers.remove(consumer)
        self.touch()

    def _dispatch(self, queue: MemoryQueue) -> None:
        while queue.ready:
            ready = [c for c in queue.consumers if c.has_room]
            if not ready:
                return
            consumer = ready[0]
            # Round robin: the consumer served goes to the back.
            queue.consumers.remove(consumer)
            queue.consumers.append(consumer)
            delivery = self.take(queue, consumer.channel)
            consumer.in_flight += 1
            self.spawn(consumer.on_delivery(delivery))

    def take(self, queue: MemoryQueue, channel: MemoryChannel) -> Delivery:
        """Hand the head of `queue` to `channel`, unacknowledged."""
        message = queue.ready.popleft()
        self._tags += 1
        queue.unacked[self._tags] = (message, channel)
        return Delivery(
            body=message.body,
            properties=queue.delivered_properties(message),
            queue=queue.name,
            routing_key=message.routing_key,
            exchange=message.exchange,
            redelivered=message.redelivered,
            tag=self._tags,
            channel=channel,
            settler=self.settler,
        )

    def settle(self, delivery: Delivery, *, requeue: bool | None) -> None:
        """Ack (`requeue` None) or nack a delivery; raises `BrokerError` for one its
        channel no longer holds."""
        queue = self.queues.get(delivery.queue)
        held = queue.unacked.pop(delivery.tag, None) if queue is not None else None
        if queue is None or held is None:
            raise BrokerError(f"PRECONDITION_FAILED - unknown delivery tag {delivery.tag}")
        message, channel = held
        self._release(queue, channel)
        if requeue:
            for over in queue.give_back([message]):
                self._dead_letter(queue, over, "delivery_limit")
        elif requeue is False:
            self._dead_letter(queue, message, "rejected")
        self._dispatch(queue)
        self.touch()

    def _release(self, queue: MemoryQueue, channel: MemoryChannel) -> None:
        for consumer in queue.consumers:
            if consumer.channel is channel:
                consumer.in_flight -= 1

    def close_channel(self, channel: MemoryChannel) -> None:
        """Close a channel: what it held unacknowledged goes back to its queues."""
        channel.is_closed = True
        for queue in list(self.queues.values()):
            owed = [tag for tag, (_, ch) in queue.unacked.items() if ch is channel]
            messages = [queue.unacked.pop(tag)[0] for tag in owed]
            queue.consumers = [c for c in queue.consumers if c.channel is not channel]
            for over in queue.give_back(messages):
                self._dead_letter(queue, over, "delivery_limit")
            self._dispatch(queue)
        self.touch()

    # -- direct reply-to --------------------------------------------------------

    def reply_consumer(self, name: str, on_reply: OnDelivery | None) -> None:
        if on_reply is None:
            self._replies.pop(name, None)
        else:
            self._replies[name] = on_reply

    def _reply(self, to: str, body: bytes, properties: Properties, mandatory: bool) -> None:
        on_reply = self._replies.get(to)
        if on_reply is None:
            if mandatory:
                raise UnroutableError(f"no reply consumer {to!r}")
            return
        self._tags += 1
        delivery = Delivery(
            body=body,
            properties=as_sent(properties),
            queue=DIRECT_REPLY_TO,
            routing_key=to,
            exchange="",
            redelivered=False,
            tag=self._tags,
            channel=self._reply_channel,
            settler=self.settler,
        )
        self.spawn(on_reply(delivery))

    # -- time -------------------------------------------------------------------

    @property
    def next_expiry(self) -> float | None:
        """The virtual time the next message's TTL runs out, if any will."""
        due = [d for q in self.queues.values() if (d := q.next_expiry) is not None]
        return min(due) if due else None

    def advance_to(self, when: float) -> None:
        """Move the clock to `when` (never back) and dead-letter what expired by then."""
        self.now = max(self.now, when)
        for queue in list(self.queues.values()):
            for message in queue.expired(self.now):
                self._dead_letter(queue, message, "expired")
        self.touch()

    # -- watching ---------------------------------------------------------------

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a delivery callback failed", exc_info=task.exception())
        self.touch()

    def touch(self) -> None:
        """Wake whoever waits for a change of state."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    @property
    def busy(self) -> list[str]:
        """What keeps the broker from being idle: messages ready in a consumed queue,
        unacknowledged deliveries, callbacks running. Empty when idle."""
        out = [f"{len(self._tasks)} delivery callback(s) running"] if self._tasks else []
        for q in self.queues.values():
            if q.unacked:
                out.append(f"{len(q.unacked)} unacknowledged on {q.name}")
            if q.ready and q.consumers:
                out.append(f"{len(q.ready)} ready on {q.name}")
        return out

    async def stop(self) -> None:
        """Cancel the delivery callbacks still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
