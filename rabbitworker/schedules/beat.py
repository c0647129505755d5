"""The beat: publishes an app's scheduled messages while it is the leader.

Leadership is a lock on the broker (`Transport.take_lock`; on RabbitMQ an exclusive
queue, `rabbitworker._amqp.leader`): the process whose connection holds it leads;
the others try again every `retry_interval` seconds, and one of them leads once the
broker has let go of the lock with the old leader's connection. Each schedule's last
tick is kept on the broker too (a one-message queue), so a new leader knows which
ticks were missed.

Time comes from `clock` (the current time) and `sleep` (waiting): the wall clock by
default, the test broker's virtual clock under `rabbitworker.testing.TestBroker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import RabbitWorkerError
from ..middleware.base import Middleware
from ..topology import beat_leader_queue_name, beat_state_queue_spec
from ..transport import Lock
from ..wire import message_properties
from .schedule import Schedule, tick_id

if TYPE_CHECKING:
    from ..app import App

__all__ = ["LOCK_RETRY_S", "Beat", "BeatInWorker", "utc_now"]

log = logging.getLogger("rabbitworker.beat")

# How often a standby tries to take the leadership: the takeover time after a leader's
# connection closed is at most this plus one publish.
LOCK_RETRY_S = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class Beat:
    """Publishes `app`'s schedules while this process holds the leadership.

    `clock` gives the current time and `sleep(seconds)` waits on that clock (tests
    inject both); `retry_interval` is how often a standby tries to take over. Use on
    a connected app: ``await beat.run()`` until `stop()`.
    """

    def __init__(
        self,
        app: App,
        *,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_interval: float = LOCK_RETRY_S,
    ) -> None:
        self.app = app
        self.clock = clock
        self.sleep = sleep
        self.retry_interval = retry_interval
        self.leading = asyncio.Event()  # set while leading, its schedules' state read
        self.published = 0
        self._stop = asyncio.Event()
        self._last: dict[str, datetime | None] = {}

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Lead when possible, until `stop()`."""
        name = beat_leader_queue_name(self.app.exchange)
        log.info("beat started: %d schedule(s), standing by for %s", len(self.schedules), name)
        while not self._stop.is_set():
            lock = await self._try(name)
            if lock is None:
                await self._pause(self.retry_interval, None)
                continue
            log.info("beat: leading (holding %s)", name)
            try:
                await self._lead(lock)
            finally:
                self.leading.clear()
                await lock.release(self.retry_interval)
            if not self._stop.is_set():
                log.warning("beat: lost the leadership; standing by")
                await self._pause(self.retry_interval, None)

    @property
    def schedules(self) -> list[Schedule]:
        return list(self.app.schedules)

    async def _try(self, name: str) -> Lock | None:
        """The lock, or None when another process holds it, the broker cannot be
        reached now, or the beat was stopped meanwhile."""

        async def take() -> Lock | None:
            # On the app's connection of the moment: the lock goes with a connection.
            return await self.app.session.transport.take_lock(name)

        attempt = asyncio.ensure_future(take())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not attempt.done():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt
            return None
        try:
            return attempt.result()
        except RabbitWorkerError as exc:
            log.debug("beat: cannot try for the leadership now: %s", exc)
            return None

    async def _pause(self, seconds: float, lock: Lock | None) -> None:
        """Wait `seconds` on the beat's clock, or less if stopped or the lock is lost."""
        waits = [
            asyncio.ensure_future(self.sleep(max(0.0, seconds))),
            asyncio.ensure_future(self._stop.wait()),
        ]
        if lock is not None:
            waits.append(asyncio.ensure_future(lock.wait_lost()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _lead(self, lock: Lock) -> None:
        try:
            for schedule in self.schedules:
                # Never published (or its state was lost): it starts from now.
                self._last[schedule.name] = await self._load(schedule) or self.clock()
            self.leading.set()
            while lock.held and not self._stop.is_set():
                if await self._publish_due(lock):
                    await self._pause(self._until_next(), lock)
                else:
                    await self._pause(self.retry_interval, lock)
        except RabbitWorkerError as exc:
            log.error("beat: %s", exc)

    async def _publish_due(self, lock: Lock) -> bool:
        """Publish what is due now; False when a publish failed."""
        now = self.clock()
        for schedule in self.schedules:
            for tick in schedule.due(self._last.get(schedule.name), now):
                try:
                    if not await self._while_held(lock, self._publish(schedule, tick)):
                        return True
                except RabbitWorkerError as exc:
                    log.error("beat: publishing %s failed: %s", tick_id(schedule.name, tick), exc)
                    return False
            self._last[schedule.name] = schedule.latest(now, self._last.get(schedule.name))
        return True

    async def _while_held(self, lock: Lock, step: Coroutine[Any, Any, None]) -> bool:
        """Run `step` unless the lock is lost first (then cancel it and return False):
        a publish waiting out an outage must not go on once another beat may lead."""
        running = asyncio.ensure_future(step)
        lost = asyncio.ensure_future(lock.wait_lost())
        try:
            await asyncio.wait({running, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if running.done():
            running.result()
            return True
        running.cancel()
        with contextlib.suppress(BaseException):
            await running
        return False

    def _until_next(self) -> float:
        now = self.clock()
        upcoming = [next(iter(s.ticks(now))) for s in self.schedules]
        if not upcoming:
            return 3600.0
        return (min(upcoming) - self.clock()).total_seconds()

    async def _publish(self, schedule: Schedule, tick: datetime) -> None:
        message_id = tick_id(schedule.name, tick)
        session = self.app.session
        key, body, properties, _ = session.producer.encode(schedule.message, message_id=message_id)
        # Not sent again after a reconnect: by then another beat may lead (and have
        # published this tick), since the lock went with the old connection.
        await session.transport.send(self.app.exchange, key, body, properties, resend=False)
        self.published += 1
        self._last[schedule.name] = tick
        log.info("beat: published %s", message_id)
        # After the tick: a leader killed in between leaves it to be published again
        # (recognisable by its id), never lost.
        await self._save(schedule, tick)

    async def _load(self, schedule: Schedule) -> datetime | None:
        transport = self.app.session.transport
        spec = beat_state_queue_spec(self.app.exchange, schedule.name)
        await transport.ensure_queue(spec)
        async with transport.browse(spec.name) as browser:
            taken = await browser.take(1)
        if not taken:
            return None
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return datetime.fromisoformat(json.loads(taken[0].body)["tick"])
        return None

    async def _save(self, schedule: Schedule, tick: datetime) -> None:
        spec = beat_state_queue_spec(self.app.exchange, schedule.name)
        body = json.dumps({"tick": tick.isoformat()}).encode()
        properties = message_properties("beat.state", message_id=tick_id(schedule.name, tick))
        await self.app.session.transport.send("", spec.name, body, properties)


class BeatInWorker(Middleware):
    """Runs a `Beat` inside a worker (``rabbitworker run --beat``): started once the
    worker has connected, stopped (its leadership released) before it closes."""

    def __init__(self, app: App) -> None:
        self.beat = Beat(app)
        self._task: asyncio.Task[None] | None = None

    async def on_worker_start(self) -> None:
        self._task = asyncio.create_task(self.beat.run())
        self._task.add_done_callback(_report)

    async def on_worker_stop(self) -> None:
        self.beat.stop()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("beat: stopped by an error: %s", task.exception())
