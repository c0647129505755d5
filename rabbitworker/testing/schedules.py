"""Schedules under `TestBroker`: the app's real `Beat`, on the broker's virtual clock.

The beat asks the time of a `VirtualClock` and sleeps on it, so a tick falls due when
the test broker moves virtual time past it. While the beat is awake (woken, and not
asleep again) it counts as busy, so `advance()` lets a tick's publish, and the work it
causes, happen before moving time on.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..schedules.beat import Beat

if TYPE_CHECKING:
    from ..app import App
    from .node import MemoryBroker

__all__ = ["VirtualBeat", "VirtualClock"]


class VirtualClock:
    """`start` plus the broker's virtual seconds; `sleep` waits until the broker's
    time has moved on that far."""

    def __init__(self, broker: MemoryBroker, start: datetime) -> None:
        self.broker = broker
        self.start = start
        self._sleepers: dict[asyncio.Future[None], float] = {}

    def now(self) -> datetime:
        return self.start + timedelta(microseconds=round(self.broker.now * 1e6))

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        self._sleepers[wake] = self.broker.now + seconds
        self.broker.touch()  # someone may wait for this sleeper to be idle
        try:
            await wake
        finally:
            del self._sleepers[wake]

    @property
    def next_due(self) -> float | None:
        """The virtual time the next sleeper wakes."""
        due = [at for wake, at in self._sleepers.items() if not wake.done()]
        return min(due) if due else None

    @property
    def asleep(self) -> bool:
        """Some sleeper waits, and none was woken and is yet to resume."""
        return bool(self._sleepers) and not any(w.done() for w in self._sleepers)

    def ring(self) -> None:
        """Wake the sleepers whose time has come."""
        for wake, at in self._sleepers.items():
            if at <= self.broker.now and not wake.done():
                wake.set_result(None)


class VirtualBeat:
    """Runs a `Beat` for `app` on a `VirtualClock` starting at `start`."""

    def __init__(self, app: App, broker: MemoryBroker, start: datetime) -> None:
        self.clock = VirtualClock(broker, start)
        self.beat = Beat(app, clock=self.clock.now, sleep=self.clock.sleep)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.beat.run())
        self._task.add_done_callback(lambda _: self.clock.broker.touch())

    @property
    def busy(self) -> list[str]:
        """What keeps the beat from being idle: awake, publishing what is due."""
        running = self._task is not None and not self._task.done()
        return ["the beat is publishing"] if running and not self.clock.asleep else []

    @property
    def next_due(self) -> float | None:
        """The virtual time the beat next wakes (its next tick, or its next try for
        the leadership)."""
        return self.clock.next_due if self._task is not None else None

    async def stop(self) -> None:
        """Stop the beat, its leadership released; an error it stopped with is raised."""
        task, self._task = self._task, None
        if task is None:
            return
        self.beat.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
