"""Poison isolation: when a worker process dies, the broker delivers again everything
it held, and nothing tells the message that killed it from its innocent neighbours.
So a redelivered message this process cannot account for is moved to its queue's
`Q.suspect` queue, and suspects run one at a time, alone in their process. A
suspect that is delivered again was alone when its process died: that counts as a
crash (`x-crashes`), and after `delivery_limit` crashes it is dead-lettered with
`WorkerCrashed`. Its neighbours never run alone with it, so they never count.

A redelivery this process can account for (its channel or connection was lost
while it held the message) is processed as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator

from ..errors import WorkerCrashed
from ..topology import suspect_queue_name
from ..transport import Delivery, Transport
from ..wire import CRASHES, copy_properties, crashes_of, new_message_id
from .settlement import Settlement

__all__ = ["Gate", "Suspects"]

log = logging.getLogger("rabbitworker.worker")

# Message ids held when a channel was lost, remembered so their redelivery is known
# innocent. Bounded: past this, the oldest are forgotten (and would only take the
# slower, still correct, suspect path).
MAX_REMEMBERED = 100_000


class Gate:
    """Lets handlers run side by side (`shared`) or one alone (`alone`): an alone
    run waits for the running ones to finish and keeps new ones out meanwhile."""

    def __init__(self) -> None:
        self.running = 0
        self._alone = 0  # alone runs waiting or running
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        if self._alone:
            async with self._changed:
                await self._changed.wait_for(lambda: not self._alone)
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if self._alone and not self.running:
                async with self._changed:
                    self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        self._alone += 1
        try:
            async with self._changed:
                await self._changed.wait_for(lambda: not self.running)
                self.running += 1
            try:
                yield
            finally:
                self.running -= 1
        finally:
            self._alone -= 1
            async with self._changed:
                self._changed.notify_all()


class Suspects:
    """Moves unaccounted redeliveries to the suspect queue and counts crashes."""

    def __init__(
        self, transport: Transport, settlement: Settlement, *, delivery_limit: int
    ) -> None:
        self.transport = transport
        self.settlement = settlement
        self.delivery_limit = delivery_limit
        self._held_at_loss: OrderedDict[str, None] = OrderedDict()
        self.moved = 0
        self.crashes = 0

    def returned(self, delivery: Delivery) -> None:
        """`delivery` went back to the broker for a known reason (its channel closed,
        or the worker handed it back): its redelivery is not a crash."""
        self._held_at_loss[delivery.message_id] = None
        while len(self._held_at_loss) > MAX_REMEMBERED:
            self._held_at_loss.popitem(last=False)

    def accounted_for(self, delivery: Delivery) -> bool:
        """Whether a redelivery is one this process knows the cause of."""
        if not delivery.redelivered:
            return True
        if delivery.message_id in self._held_at_loss:
            del self._held_at_loss[delivery.message_id]
            return True
        return False

    async def move(self, delivery: Delivery, queue: str) -> None:
        """Move a redelivered message of `queue` to its suspect queue (a confirmed
        copy, then the ack)."""
        if not delivery.properties.message_id:
            delivery.properties.message_id = new_message_id()
        properties = copy_properties(delivery.properties, routing_key=delivery.routing_key)
        await self.transport.send("", suspect_queue_name(queue), delivery.body, properties)
        self.moved += 1
        log.info(
            "message %s on %s was delivered again after a worker lost it; it will run alone",
            delivery.message_id,
            queue,
        )
        await delivery.ack()

    async def crashed(self, delivery: Delivery, queue: str) -> None:
        """A suspect delivered again: its process died while it ran alone."""
        crashes = crashes_of(delivery.headers) + 1
        self.crashes += 1
        if crashes >= self.delivery_limit:
            error = WorkerCrashed(
                f"a worker process died while this message ran alone, {crashes} time(s): it "
                "probably kills the process (a segfault, os._exit, the out-of-memory killer)"
            )
            await self.settlement.dead_letter(delivery, queue, error)
        else:
            log.warning(
                "message %s on %s: its worker process died while it ran alone (%d of %d); "
                "it will run alone again",
                delivery.message_id,
                queue,
                crashes,
                self.delivery_limit,
            )
            properties = copy_properties(
                delivery.properties,
                routing_key=delivery.routing_key,
                set_headers={CRASHES: crashes},
            )
            await self.transport.send("", suspect_queue_name(queue), delivery.body, properties)
        await delivery.ack()
