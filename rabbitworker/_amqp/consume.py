"""Consuming: deliveries go from aiormq straight to the callback as `Delivery`
values, in the one task aiormq starts for each, while the robust channel still
restores the consumer (with its prefetch) after a reconnect.

aio-pika's own `Queue.consume` wraps each delivery in an `IncomingMessage` and runs
the callback in a second task; skipping both saves a task creation and a scheduling
round per message. This leans on `RobustQueue._consumers` (what a robust channel
re-consumes with after a reconnect): a private attribute, used here alone, under
the aio-pika version bound in pyproject.toml.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

import aiormq.abc
from aio_pika.abc import AbstractRobustChannel, ConsumerTag, TimeoutType
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import DeliveredMessage
from pamqp.common import Arguments

from ..transport import Delivery, OnChannelClosed, OnDelivery, Settler
from .errors import broker_text
from .properties import from_amqp

__all__ = ["AmqpConsumer", "DirectQueue", "channel_of", "to_delivery"]

log = logging.getLogger("rabbitworker.consumer")

RawCallback = Callable[[DeliveredMessage], Coroutine[Any, Any, Any]]


def channel_of(delivery: Delivery) -> aiormq.abc.AbstractChannel:
    """The aiormq channel a delivery made by `to_delivery` arrived on."""
    return cast(aiormq.abc.AbstractChannel, delivery.channel)


def to_delivery(message: DeliveredMessage, queue: str, settler: Settler) -> Delivery:
    """A `Delivery` for what aiormq received from `queue`."""
    frame: Any = message.delivery
    return Delivery(
        body=message.body,
        properties=from_amqp(message.header.properties),
        queue=queue,
        routing_key=frame.routing_key or "",
        exchange=frame.exchange or "",
        redelivered=bool(frame.redelivered),
        tag=frame.delivery_tag,
        channel=message.channel,
        settler=settler,
    )


class DirectQueue(RobustQueue):
    """A robust queue whose consumers run in aiormq's task for each delivery.

    Set as a robust channel's `QUEUE_CLASS`, it is what that channel declares, keeps
    and restores (re-consuming with this same method) when the connection comes back.
    """

    async def consume(  # type: ignore[override]
        self,
        callback: RawCallback,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: Arguments = None,
        consumer_tag: ConsumerTag | None = None,
        timeout: TimeoutType = None,
        robust: bool = True,
    ) -> ConsumerTag:
        channel = await self.channel.get_underlay_channel()
        result = await channel.basic_consume(
            queue=self.name,
            consumer_callback=callback,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=arguments,
            consumer_tag=consumer_tag,
            timeout=timeout,
        )
        tag = result.consumer_tag
        if tag is None:
            raise RuntimeError("the broker returned no consumer tag")
        if robust:
            self._consumers[tag] = {
                "callback": callback,
                "no_ack": no_ack,
                "exclusive": exclusive,
                "arguments": arguments,
            }
        return tag


async def _deliver(
    on_delivery: OnDelivery, queue: str, settler: Settler, message: DeliveredMessage
) -> None:
    await on_delivery(to_delivery(message, queue, settler))


class AmqpConsumer:
    """A queue consumed on a robust channel of its own; `cancel()` stops it."""

    def __init__(self, queue: str, channel: AbstractRobustChannel) -> None:
        self.queue = queue
        self.channel = channel
        self._queue: DirectQueue | None = None
        self._tag: ConsumerTag | None = None

    async def start(
        self,
        on_delivery: OnDelivery,
        settler: Settler,
        *,
        prefetch: int,
        on_closed: OnChannelClosed | None,
        no_ack: bool = False,
        passive: bool = True,
    ) -> None:
        channel = self.channel
        channel.QUEUE_CLASS = DirectQueue
        await channel.set_qos(prefetch_count=prefetch)
        # Declared (passively) rather than looked up, so the robust channel knows the
        # queue and restores its consumer, with this prefetch, after a reconnect.
        queue = await channel.declare_queue(self.queue, passive=passive)
        assert isinstance(queue, DirectQueue)
        if on_closed is not None:
            channel.close_callbacks.add(functools.partial(self._closed, on_closed))
        callback = functools.partial(_deliver, on_delivery, self.queue, settler)
        self._tag = await queue.consume(callback, no_ack=no_ack)
        self._queue = queue

    def _closed(self, on_closed: OnChannelClosed, _: Any, exc: BaseException | None) -> None:
        by_broker = exc is not None and hasattr(exc, "args") and " - " in str(exc)
        reason = broker_text(exc) if exc is not None else "closed"
        try:
            on_closed(self.channel, reason, by_broker)
        except Exception:
            log.exception("channel-closed listener failed for %s", self.queue)

    async def cancel(self) -> None:
        if self._queue is not None and self._tag is not None:
            queue, tag, self._queue = self._queue, self._tag, None
            await queue.cancel(tag)
