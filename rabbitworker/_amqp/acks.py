"""Coalesced acknowledgements: the acks of deliveries whose handlers finished in the
same turn of the event loop go out together, as one `basic.ack` with `multiple=True`
wherever that covers only settled deliveries.

Delivery tags count up from 1 on each channel. A window per channel keeps a mark, the
highest tag such that every tag up to it is settled (acked or nacked), and the settled
tags above it. A flush acks the unbroken run of finished tags just above the mark with
one frame and any finished tag past a gap (a handler still running) on its own, so a
message whose handler has not finished is never acknowledged, and a slow handler holds
up nobody else's ack. A reopened channel is a new channel with a window of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiormq.exceptions

from ..transport import Delivery
from .consume import channel_of

__all__ = ["AckBatcher"]

# Settled tags remembered above a gap. A handler that runs for very long can leave a
# gap while many later tags settle; past this many, the window stops coalescing
# rather than grow (every ack is then sent on its own).
MAX_SETTLED_ABOVE_GAP = 65_536

# A flush waits, at most LINGER_S, for this many finished deliveries: on a quorum
# queue every ack frame is a command through the queue's log, and one frame per 25
# deliveries is the broker's ceiling (docs/performance.md). A queue consumed with a
# small prefetch (or few handlers at once) waits for a quarter of it, so neither the
# broker nor the handlers' slots are left waiting on acks held back for a batch.
# A linger that ends short of a batch means handlers finish too slowly for batches to
# fill (20 ms handlers, say): each slot would only wait longer for its ack, and the
# broker's prefetch credit with it. Acks then go out on the next turn of the loop, as
# without lingering, for QUIET_S before a linger is tried again.
ACK_BATCH = 25
LINGER_S = 0.002
QUIET_S = 0.1


def batch_for(prefetch: int) -> int:
    """Finished deliveries a flush waits for on a channel with this prefetch (0: none)."""
    return ACK_BATCH if prefetch <= 0 else max(1, min(ACK_BATCH, prefetch // 4))


class _Window:
    # No reference to the channel here: the windows are weakly keyed by it.
    __slots__ = (
        "batch", "coalesce", "finished", "flushed", "full", "mark", "quiet_until", "settled",
        "task",
    )  # fmt: skip

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.quiet_until = 0.0  # loop time before which a flush does not linger
        self.full: asyncio.Future[None] | None = None  # set when `batch` have finished
        self.mark = 0
        self.finished: list[int] = []  # handled since the last flush, not yet acked
        self.settled: set[int] = set()  # above the mark: acked or nacked already
        self.flushed: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.coalesce = True

    def plan(self) -> tuple[int, list[int]]:
        """The tag to ack with `multiple=True` (0 for none) and the tags to ack alone."""
        finished = self.finished
        self.finished = []
        if not self.coalesce:
            return 0, finished
        settled, now = self.settled, set(finished)
        settled |= now
        # The multiple ack ends on a tag acked now: one the broker still holds.
        run_end = 0
        tag = self.mark + 1
        while tag in settled:
            settled.discard(tag)
            if tag in now:
                run_end = tag
            tag += 1
        self.mark = tag - 1
        singles = [t for t in finished if t > self.mark]
        if len(settled) > MAX_SETTLED_ABOVE_GAP:
            self.coalesce = False
            settled.clear()
        return run_end, singles


class AckBatcher:
    """Acknowledges finished deliveries in as few frames as is safe (a `Settler`)."""

    def __init__(self) -> None:
        self._windows: weakref.WeakKeyDictionary[Any, _Window] = weakref.WeakKeyDictionary()
        self._batches: dict[str, int] = {}

    def expect(self, queue: str, holders: int) -> None:
        """At most `holders` deliveries from `queue` can be unacked or running at once
        (its prefetch, or the handlers' concurrency if lower): it sizes their batches."""
        self._batches[queue] = batch_for(holders)

    @property
    def pending(self) -> int:
        """Finished deliveries whose ack has not been written yet."""
        return sum(len(w.finished) for w in self._windows.values())

    async def ack(self, delivery: Delivery) -> None:
        """Acknowledge a delivery whose handling finished; returns once its ack, shared
        with the others that finished in this turn of the loop, is queued on the
        connection (ahead of any later frame, a channel close included).

        Raises `ChannelInvalidStateError` when its channel has closed meanwhile."""
        tag = delivery.tag
        channel = delivery.channel
        if channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
        window = self._windows.get(channel)
        if window is None:
            batch = self._batches.get(delivery.queue, 1)
            window = self._windows[channel] = _Window(batch)
        window.finished.append(tag)
        full = window.full
        if full is not None and len(window.finished) >= window.batch and not full.done():
            full.set_result(None)
        if window.flushed is None:
            window.flushed = asyncio.get_running_loop().create_future()
        flushed = window.flushed
        if window.task is None:
            # A task's first step runs on the next turn of the loop: by then every
            # handler that finished in this turn has joined the flush.
            window.task = asyncio.ensure_future(self._flush(window, channel))
        await asyncio.shield(flushed)

    async def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        """Return a delivery to the broker, at once (never coalesced)."""
        channel = channel_of(delivery)
        await channel.basic_nack(delivery.tag, requeue=requeue)
        window = self._windows.get(channel)
        if window is not None and window.coalesce and delivery.tag > window.mark:
            window.settled.add(delivery.tag)

    async def _flush(self, window: _Window, channel: Any) -> None:
        # One flush at a time per window: writing can wait on a full frame buffer, and
        # a second flush overtaking the first would ack a tag twice (a channel error).
        try:
            while window.flushed is not None:
                if len(window.finished) < window.batch:
                    try:
                        await _linger(window)
                    except asyncio.CancelledError:
                        window.flushed.cancel()
                        raise
                flushed, window.flushed = window.flushed, None
                try:
                    multiple, singles = window.plan()
                    if multiple:
                        await channel.basic_ack(multiple, multiple=True, wait=False)
                    for tag in singles:
                        await channel.basic_ack(tag, wait=False)
                except asyncio.CancelledError:
                    flushed.cancel()
                    raise
                except Exception as exc:
                    self._windows.pop(channel, None)
                    flushed.set_exception(exc)
                    flushed.exception()  # each waiter raises it; the future itself is handled
                else:
                    flushed.set_result(None)
        finally:
            window.task = None


async def _linger(window: _Window) -> None:
    """Wait until `window.batch` deliveries have finished, or LINGER_S has passed; not
    at all for QUIET_S after a linger that ended short of a batch."""
    loop = asyncio.get_running_loop()
    if loop.time() < window.quiet_until:
        return
    full = window.full = loop.create_future()
    timer = loop.call_later(LINGER_S, _set, full)
    try:
        await full
    finally:
        timer.cancel()
        window.full = None
    if len(window.finished) < window.batch:
        window.quiet_until = loop.time() + QUIET_S


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
