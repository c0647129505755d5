"""Poison isolation: when a worker process dies, the broker delivers again everything
it held, and nothing tells the message that killed it from its innocent neighbours.
So a redelivered message this process cannot account for is moved to its queue's
`Q.suspect` queue, and suspects run one at a time, alone in their process.

A suspect is taken (basic.get) only once nothing else runs in the process, and is
the only message the process holds from its suspect queue while it runs. So a
suspect delivered again was running alone when its process died: that counts as a
crash (`x-crashes`), and after `delivery_limit` crashes it is dead-lettered with
`WorkerCrashed`. Its neighbours never run alone with it, so they never count, and a
suspect never waits, unacknowledged, beside handlers that might kill the process.

A redelivery this process can account for (its channel or connection was lost
while it held the message, or it gave the message back itself) is processed as
usual: the `ReturnLedger` keeps those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from ..errors import WorkerCrashed
from ..move import move
from ..topology import suspect_queue_name
from ..transport import Delivery, Transport
from ..wire import CRASHES, crashes_of, new_message_id

__all__ = ["DeadLettering", "Gate", "ReturnLedger", "SuspectIntake", "Suspects"]

log = logging.getLogger("rabbitworker.worker")

# Message ids held when a channel was lost, remembered so their redelivery is known
# innocent. Bounded: past this, the oldest are forgotten (and would only take the
# slower, still correct, suspect path).
MAX_REMEMBERED = 100_000
# How often a worker looks for suspects that other processes moved (its own moves
# wake it at once). A passive declare on a short-lived channel.
SUSPECT_POLL_S = 1.0


class Gate:
    """Lets handlers run side by side (shared) or one alone: an alone run waits for
    the running ones to finish and keeps new ones out meanwhile.

    The shared side is on every delivery's path, so it is two plain methods rather
    than a context manager: `enter_shared` does not suspend unless an alone run is
    waiting or running.
    """

    __slots__ = ("_alone", "_idle", "_no_alone", "running")

    def __init__(self) -> None:
        self.running = 0
        self._alone = 0  # alone runs waiting or running
        self._no_alone = asyncio.Event()
        self._no_alone.set()
        self._idle = asyncio.Event()  # nothing running
        self._idle.set()

    async def enter_shared(self) -> None:
        while self._alone:
            await self._no_alone.wait()
        self.running += 1
        self._idle.clear()

    def leave_shared(self) -> None:
        self.running -= 1
        if not self.running:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        self._alone += 1
        self._no_alone.clear()
        try:
            while self.running:
                await self._idle.wait()
            self.running += 1
            self._idle.clear()
            try:
                yield
            finally:
                self.leave_shared()
        finally:
            self._alone -= 1
            if not self._alone:
                self._no_alone.set()


# Dead-letters a delivery of a work queue with an error (`Settlement.dead_letter`).
DeadLettering = Callable[[Delivery, str, BaseException], Awaitable[None]]


class ReturnLedger:
    """The messages this process knows went back to the broker (its channel closed
    while it held them, or it gave them back itself), by id: their redelivery is
    no crash."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()

    def returned(self, delivery: Delivery) -> None:
        """`delivery` went back to the broker for a known reason."""
        self.returned_id(delivery.message_id)

    def returned_id(self, message_id: str) -> None:
        """`returned` for a message known by its id."""
        self._ids[message_id] = None
        while len(self._ids) > MAX_REMEMBERED:
            self._ids.popitem(last=False)

    def accounted_for(self, delivery: Delivery) -> bool:
        """Whether a redelivery is one this process knows the cause of (each return
        accounts for one redelivery)."""
        if not delivery.redelivered:
            return True
        if delivery.message_id in self._ids:
            del self._ids[delivery.message_id]
            return True
        return False


class Suspects:
    """Moves unaccounted redeliveries to the suspect queue and counts crashes.

    `dead_letter` dead-letters a suspect that crashed its process too often;
    `on_moved(queue)` is told of each move, so that the queue's intake looks at once.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        dead_letter: DeadLettering,
        delivery_limit: int,
        on_moved: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.transport = transport
        self.dead_letter = dead_letter
        self.delivery_limit = delivery_limit
        self.on_moved = on_moved
        self.moved = 0
        self.crashes = 0

    async def move(self, delivery: Delivery, queue: str) -> None:
        """Move a redelivered message of `queue` to its suspect queue; raises what
        the publish raises, the delivery then still held."""
        if not delivery.properties.message_id:
            delivery.properties.message_id = new_message_id()
        await move(self.transport, delivery, "", suspect_queue_name(queue))
        self.moved += 1
        log.info(
            "message %s on %s was delivered again after a worker lost it; it will run alone",
            delivery.message_id,
            queue,
        )
        self.on_moved(queue)

    async def crashed(self, delivery: Delivery, queue: str) -> None:
        """A suspect delivered again: its process died while it ran alone. Moved to
        the dead-letter queue at the delivery limit, else back to the suspect queue
        with the crash counted; raises what the publish raises."""
        crashes = crashes_of(delivery.headers) + 1
        self.crashes += 1
        if crashes >= self.delivery_limit:
            error = WorkerCrashed(
                f"a worker process died while this message ran alone, {crashes} time(s): it "
                "probably kills the process (a segfault, os._exit, the out-of-memory killer)"
            )
            await self.dead_letter(delivery, queue, error)
            return
        log.warning(
            "message %s on %s: its worker process died while it ran alone (%d of %d); "
            "it will run alone again",
            delivery.message_id,
            queue,
            crashes,
            self.delivery_limit,
        )
        await move(
            self.transport, delivery, "", suspect_queue_name(queue), set_headers={CRASHES: crashes}
        )


class SuspectIntake:
    """Takes the suspects of one work queue, one at a time, each only once the gate
    lets it run alone; `handle(delivery)` runs or counts it."""

    def __init__(
        self,
        transport: Transport,
        queue: str,
        gate: Gate,
        handle: Callable[[Delivery], Awaitable[None]],
        *,
        poll: float = SUSPECT_POLL_S,
    ) -> None:
        self.transport = transport
        self.queue = queue
        self.name = suspect_queue_name(queue)
        self.gate = gate
        self.handle = handle
        self.poll = poll
        self.taken = 0
        # True while it may hold a suspect: stopping must then wait, not cancel.
        self.busy = False
        self._wake = asyncio.Event()
        self._wake.set()  # look once at the start: suspects may be waiting already
        self._stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> asyncio.Task[None] | None:
        """Stop taking suspects. Returns the task if it is handling one (let it
        finish, as a running handler); otherwise it is cancelled at once."""
        self._stopping = True
        task, self.task = self.task, None
        if task is None or task.done():
            return None
        if self.busy:
            self._wake.set()
            return task
        task.cancel()
        return None

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()
            try:
                await self._take_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The connection is down, or the queue was deleted: look again later.
                log.debug("could not take suspects from %s: %s", self.name, exc)

    async def _take_all(self) -> None:
        info = await self.transport.inspect(self.name)
        if info is None or not info.messages or self._stopping:
            return
        async with self.gate.alone():
            if self._stopping:
                return
            # The acks of the moves (and of the handlers that just ran) must be in:
            # should the suspect kill the process, a moved original whose ack was
            # still on its way would come back as a second copy.
            await self.transport.acks_taken()
            self.busy = True
            try:
                async with self.transport.browse(self.name) as browser:
                    while not self._stopping:
                        taken = await browser.take(1)
                        if not taken:
                            break
                        self.taken += 1
                        await self.handle(taken[0])
            finally:
                self.busy = False
