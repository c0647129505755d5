"""The worker's consumer: deliveries go from aiormq straight to the worker's callback,
in the one task aiormq starts for each, while the robust channel still restores the
consumer after a reconnect.

aio-pika's own `Queue.consume` runs the callback in a second task per delivery;
skipping it saves a task creation and a scheduling round per message.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, ConsumerTag, TimeoutType
from aio_pika.message import IncomingMessage
from aio_pika.robust_queue import RobustQueue
from aiormq.abc import DeliveredMessage
from pamqp.common import Arguments

__all__ = ["DirectQueue"]

Callback = Callable[[AbstractIncomingMessage], Awaitable[Any]]


async def _deliver(callback: Callback, no_ack: bool, message: DeliveredMessage) -> None:
    await callback(IncomingMessage(message, no_ack=no_ack))


class DirectQueue(RobustQueue):
    """A robust queue whose consumers run in aiormq's task for each delivery.

    Set as a robust channel's `QUEUE_CLASS`, it is what that channel declares, keeps
    and restores (re-consuming with this same method) when the connection comes back.
    """

    async def consume(
        self,
        callback: Callback,
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
            consumer_callback=functools.partial(_deliver, callback, no_ack),
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
            # What RobustQueue.restore() re-consumes with after a reconnect.
            self._consumers[tag] = {
                "callback": callback,
                "no_ack": no_ack,
                "exclusive": exclusive,
                "arguments": arguments,
            }
        return tag
