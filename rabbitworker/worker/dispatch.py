"""Each delivery's way through a worker: its task's pacing, a concurrency slot and
the gate, then processing and settlement (alone, for a crash suspect), or straight
back to the broker when the worker is stopping, or to the suspect queue when a
redelivery cannot be accounted for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from ..move import move
from ..pacing import Pacing, TaskPacer
from ..transport import Channel, Delivery, Transport
from .processing import Processor
from .settlement import Settlement
from .stats import InFlight
from .suspects import Gate, ReturnLedger, Suspects

__all__ = ["Dispatcher", "Held"]

log = logging.getLogger("rabbitworker.worker")


@dataclass(slots=True)
class Held:
    """A delivery this worker holds: the work queue it belongs to, and since when
    (`time.monotonic()`) its handler runs, None while it has not started."""

    delivery: Delivery
    queue: str
    since: float | None = None

    @property
    def started(self) -> bool:
        return self.since is not None


class Dispatcher:
    """Runs deliveries under a shared concurrency limit."""

    def __init__(
        self,
        transport: Transport,
        processor: Processor,
        settlement: Settlement,
        suspects: Suspects,
        ledger: ReturnLedger,
        *,
        concurrency: int,
        prefetch: int,
        pacing: Pacing | None = None,
    ) -> None:
        self.transport = transport
        self.processor = processor
        self.settlement = settlement
        self.suspects = suspects
        self.ledger = ledger
        self.gate = Gate()
        self.pacing = pacing
        self._limit = asyncio.Semaphore(concurrency)
        self.held: dict[asyncio.Task[Any], Held] = {}
        self.stopping = asyncio.Event()
        self.consumers_cancelled = asyncio.Event()
        self.handled: Counter[str] = Counter()  # by outcome ("ack", "retry", ...)
        self.handed_back = 0  # by the drain
        # The last `prefetch` messages settled from each work queue: when its channel
        # is lost, their acks may have been lost with it (the broker holds at most
        # `prefetch` unacked), and their redelivery is no crash either.
        self._prefetch = prefetch
        self._settled: dict[str, deque[str]] = {}
        # Deliveries cancelled with their work queue's channel, until it is reported.
        self._lost: dict[str, list[Held]] = {}
        # Moves to a suspect queue under way: new work waits for them, so that a fresh
        # message that kills the process cannot take a redelivered neighbour down with
        # it a second time (the queue's own delivery limit counts every return).
        self._moves = 0
        self._no_moves = asyncio.Event()
        self._no_moves.set()

    @property
    def waiting(self) -> list[asyncio.Task[Any]]:
        """Deliveries whose handler has not started (waiting for a slot or the gate)."""
        return [t for t, h in self.held.items() if not h.started]

    @property
    def running(self) -> dict[asyncio.Task[Any], Held]:
        return {t: h for t, h in self.held.items() if h.started}

    def in_flight(self) -> list[InFlight]:
        """The handlers running now."""
        now = time.monotonic()
        return [
            InFlight(h.delivery.message_id, h.delivery.type, h.queue, now - h.since)
            for h in list(self.held.values())
            if h.since is not None
        ]

    def waiting_by_queue(self) -> Counter[str]:
        """For each queue, the deliveries held waiting for a slot or the gate."""
        return Counter(h.queue for h in list(self.held.values()) if h.since is None)

    async def on_work(self, queue: str, delivery: Delivery) -> None:
        """A delivery from a work queue."""
        if self.stopping.is_set():
            await self.hand_back(delivery, queue)
            return
        if delivery.redelivered and not self.ledger.accounted_for(delivery):
            await self._move_to_suspects(delivery, queue)
            return
        task = asyncio.current_task()
        assert task is not None
        held = self.held[task] = Held(delivery, queue)
        try:
            await self._run_shared(held)
        except asyncio.CancelledError:
            self._cancelled(held)
            raise
        finally:
            del self.held[task]

    async def _move_to_suspects(self, delivery: Delivery, queue: str) -> None:
        self._moves += 1
        self._no_moves.clear()
        try:
            await self._guarded(self.suspects.move(delivery, queue), delivery, queue)
        finally:
            self._moves -= 1
            if not self._moves:
                self._no_moves.set()

    async def _run_shared(self, held: Held) -> None:
        delivery, queue = held.delivery, held.queue
        if not self._no_moves.is_set():
            await self._no_moves.wait()
        pacer = self.pacing.pacer(queue, delivery.type) if self.pacing is not None else None
        if not await self._enter(pacer):
            await self.hand_back(delivery, queue)  # cancelled by the drain
            return
        try:
            # A slot that frees up during the drain must not start new work.
            if self.stopping.is_set():
                await self.hand_back(delivery, queue)
            else:
                await self._handle_or_hand_back(held)
                self._remember_settled(delivery, queue)
        finally:
            self.gate.leave_shared()
            self._limit.release()
            if pacer is not None:
                pacer.release()

    async def _enter(self, pacer: TaskPacer | None) -> bool:
        """Wait for the task's pacing, a shared slot and the gate; False when the
        drain cancelled the wait. The pacing comes first: a paced task waiting for its
        turn holds none of the slots the other tasks share."""
        limit, gate = self._limit, self.gate
        try:
            if pacer is not None:
                await pacer.admit()
            try:
                await limit.acquire()
                try:
                    await gate.enter_shared()
                except BaseException:
                    limit.release()
                    raise
            except BaseException:
                if pacer is not None:
                    pacer.release()
                raise
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            _uncancel()
            return False
        return True

    def _remember_settled(self, delivery: Delivery, queue: str) -> None:
        if delivery.channel_closed:
            # Lost already (its ack too, maybe): the channel's close was reported.
            self.ledger.returned(delivery)
            return
        settled = self._settled.get(queue)
        if settled is None:
            settled = self._settled[queue] = deque(maxlen=self._prefetch)
        settled.append(delivery.message_id)

    async def on_suspect(self, queue: str, delivery: Delivery) -> None:
        """A suspect of a work queue, taken while the gate lets it run alone."""
        if self.stopping.is_set():
            await self.hand_back(delivery, queue)
            return
        if not self.ledger.accounted_for(delivery):
            await self._guarded(self.suspects.crashed(delivery, queue), delivery, queue)
            return
        task = asyncio.current_task()
        assert task is not None
        held = self.held[task] = Held(delivery, queue)
        try:
            await self._handle_or_hand_back(held)
        except asyncio.CancelledError:
            self._cancelled(held)
            raise
        finally:
            del self.held[task]
            if delivery.channel_closed:
                # Its channel was lost while it ran (its ack with it): the broker
                # delivers it again, and that is not a crash.
                self.ledger.returned(delivery)

    def _cancelled(self, held: Held) -> None:
        # Cancelled and not handed back: aiormq cancels the deliveries of a channel it
        # closes, usually before the channel's close is reported. The broker delivers
        # the message again, and that redelivery is not a crash.
        delivery = held.delivery
        self.ledger.returned(delivery)
        if delivery.queue == held.queue and delivery.channel_closed:
            self._lost.setdefault(held.queue, []).append(held)  # for channel_closed

    async def _handle_or_hand_back(self, held: Held) -> None:
        try:
            await self._handle(held)
        except asyncio.CancelledError:
            if not self.stopping.is_set() or held.delivery.channel_closed:
                raise
            # Interrupted by the drain at the end of the grace period: handed back as
            # a copy, so its redelivery is not taken for a crash.
            _uncancel()
            await self.hand_back(held.delivery, held.queue)

    async def _handle(self, held: Held) -> None:
        held.since = time.monotonic()
        delivery = held.delivery
        processed = await self.processor.process(delivery, held.queue)
        done = await self.settlement.settle(delivery, held.queue, processed)
        self.handled[done] += 1

    async def _guarded(self, step: Any, delivery: Delivery, queue: str) -> None:
        """Run a move or crash step; if its publish fails the delivery goes back."""
        try:
            await step
        except Exception as exc:
            log.error(
                "message %s on %s: could not move it to the suspect queue (%s); "
                "returning it to the queue",
                delivery.message_id,
                queue,
                exc,
            )
            with contextlib.suppress(Exception):
                await delivery.nack(requeue=True)

    async def hand_back(self, delivery: Delivery, queue: str) -> None:
        """Return a delivery whose handler never started (or was interrupted by the
        drain) to its queue: moved to the queue's tail, so that its redelivery is not
        taken for a crash; a plain requeue if the move fails."""
        self.handed_back += 1
        log.debug("message %s on %s handed back", delivery.message_id, queue)
        await self.settlement.announce_hand_back(delivery, queue)
        # Moved before our consumer is gone, it could come straight back to us.
        await self.consumers_cancelled.wait()
        try:
            await move(self.transport, delivery, "", delivery.queue)
        except Exception:
            with contextlib.suppress(Exception):
                await delivery.nack(requeue=True)

    def channel_closed(self, queue: str, channel: Channel, reason: str, by_broker: bool) -> None:
        """Account for the messages a lost consuming channel held, and log it."""
        on_it = self._returned_with(queue)
        running = [h.delivery.message_id for h in on_it if h.started]
        if by_broker:
            log.warning(
                "the broker closed the channel consuming %s: %s; running: %s; the broker "
                "delivers its %d unacknowledged message(s) again",
                queue,
                reason,
                ", ".join(running) or "none",
                len(on_it),
            )
        elif on_it:
            # The connection's loss is the WARNING, reported once for all channels.
            log.info(
                "lost the channel consuming %s (%s): %d running handler(s) interrupted, "
                "%d waiting message(s) go back to the broker",
                queue,
                reason or "connection lost",
                len(running),
                len(on_it) - len(running),
            )

    def _returned_with(self, queue: str) -> list[Held]:
        """Mark what the lost channel of `queue` held as returned (the broker delivers
        it again, and that is not a crash); the held deliveries, for the log."""
        on_it = [
            h for h in self.held.values() if h.delivery.queue == queue and h.delivery.channel_closed
        ]
        for h in on_it:
            # Known now, not when its handler ends: the broker may deliver it again
            # (on the restored channel) while that handler still runs.
            self.ledger.returned(h.delivery)
        on_it += self._lost.pop(queue, ())
        for message_id in self._settled.pop(queue, ()):
            self.ledger.returned_id(message_id)
        return on_it


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
