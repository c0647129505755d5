"""`TestBroker`: an app and its worker running on a `MemoryBroker`, with virtual
time and what a test asserts on (what each queue received, the dead letters and
their reasons, the outcome of every attempt)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..message import R, TaskMessage
from ..middleware.base import Middleware, Settled
from ..results.memory import MemoryResultStore
from ..rpc import PendingReply
from ..schedules.beat import Beat, utc_now
from ..topology import dead_letter_queue_name, suspect_queue_name
from ..wire import attempt_of
from ..worker import Worker
from .node import MemoryBroker
from .queues import DeadLetter, Message
from .schedules import VirtualBeat
from .transport import MemoryTransport

if TYPE_CHECKING:
    from ..app import App
    from ..context import Context
    from ..settings import Settings

__all__ = ["Attempt", "TestBroker"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one delivery of a message ended: `kind` is "ack", "retry",
    "dead_letter" or "handed_back"; `delay_ms` is the retry's back-off."""

    message_id: str
    queue: str
    routing_key: str
    attempt: int
    kind: str
    error: BaseException | None
    delay_ms: int
    result: Any
    at: float  # virtual seconds


class _Recorder(Middleware):
    """Notes every settled delivery, after the worker carried the outcome out."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.attempts: list[Attempt] = []

    async def on_settle(self, ctx: Context | None, settled: Settled) -> None:
        delivery = settled.delivery
        self.attempts.append(
            Attempt(
                message_id=delivery.message_id,
                queue=settled.queue,
                routing_key=delivery.type,
                attempt=attempt_of(delivery.headers),
                kind=settled.kind,
                error=settled.error,
                delay_ms=settled.delay_ms,
                result=settled.result,
                at=self.broker.now,
            )
        )


class TestBroker:
    """Runs `app` and a worker for its queues on an in-memory broker.

    ``async with TestBroker(app) as broker:`` connects the app to a fresh
    `MemoryBroker` (so `publish`, `call`, `submit` and `ctx.publish` work as usual)
    and starts a `Worker` on `queues` (all of the app's by default; none with
    ``worker=False``). Time is virtual: `join()` and `advance()` move it, so a
    60 s back-off costs nothing; with ``auto_advance=True`` it also jumps to the
    next retry or delayed message whenever nothing else can run. The app's
    schedules are published by its `Beat` on that clock (unless ``beat=False``),
    which reads `start` (the wall-clock time by default) at virtual second 0. An
    app with a results store gets an in-memory one for the duration. Everything
    is restored on the way out.
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        worker: bool = True,
        concurrency: int | None = None,
        prefetch: int | None = None,
        timeout: float = 10.0,
        auto_advance: bool = False,
        beat: bool = True,
        start: datetime | None = None,
    ) -> None:
        self.app = app
        self.broker = MemoryBroker()
        self.timeout = timeout
        self._queues = list(queues) if queues is not None else None
        self._run_worker = worker
        self._worker_options: dict[str, Any] = {"concurrency": concurrency, "prefetch": prefetch}
        self._recorder = _Recorder(self.broker)
        self._saved: tuple[Any, Any] | None = None
        self.worker: Worker | None = None
        self.auto_advance = auto_advance
        self._auto: asyncio.Task[None] | None = None
        self._entered = 0  # times this entered the app, each left on the way out
        self._run_beat = beat
        self._start = start
        self._beat: VirtualBeat | None = None

    # -- running --------------------------------------------------------------

    async def __aenter__(self) -> TestBroker:
        app = self.app
        self.broker.loop = asyncio.get_running_loop()
        self._saved = (app.transport_factory, app._results_store)
        app.transport_factory = self._transport
        if app._results_store is not None or app.settings.results is not None:
            app._results_store = MemoryResultStore(clock=lambda: self.broker.now)
        app.middleware.append(self._recorder)
        try:
            await self._enter_app()
            if self._run_worker:
                self.worker = Worker(app, queues=self._queues, grace=0, **self._worker_options)
                await self.worker.start()
            if self._run_beat and app.schedules:
                self._beat = VirtualBeat(app, self.broker, self._start or utc_now())
                self._beat.start()
            if self.auto_advance:
                self._auto = asyncio.ensure_future(self._advance_when_idle())
        except BaseException:
            await self._restore()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._restore()

    def _transport(self, app: App, settings: Settings) -> MemoryTransport:
        return MemoryTransport(self.broker, name=app.name)

    async def _restore(self) -> None:
        app = self.app
        if self._auto is not None:
            self._auto.cancel()
            await asyncio.gather(self._auto, return_exceptions=True)
            self._auto = None
        try:
            if self._beat is not None:
                beat, self._beat = self._beat, None
                await beat.stop()
            if self.worker is not None:
                await self.worker.shutdown()
            while self._entered:
                self._entered -= 1
                await app.__aexit__(None, None, None)
            await app.close()
            await self.broker.stop()
        finally:
            if self._recorder in app.middleware:
                app.middleware.remove(self._recorder)
            if self._saved is not None:
                app.transport_factory, app._results_store = self._saved
                self._saved = None

    async def crash_worker(self) -> None:
        """Act out the worker's process dying: its connection drops, its handlers stop
        where they are (no follow-up, no ack), and a new worker starts in its place.

        As with RabbitMQ, what it held is delivered again, marked redelivered; the new
        worker cannot account for it, so it runs alone as a crash suspect, and a
        message whose worker dies with it `delivery_limit` times is dead-lettered as
        `WorkerCrashed`. Raises `RuntimeError` without a worker."""
        worker = self.worker
        if worker is None:
            raise RuntimeError("TestBroker(worker=False) has no worker to crash")
        await self.app.session.transport.close()  # the broker takes back what it held
        await self.broker.stop()  # the handlers it ran die with it
        await worker.shutdown()  # tidies this process's side; nothing is left to settle
        self.worker = Worker(self.app, queues=self._queues, grace=0, **self._worker_options)
        await self.worker.start()
        await self._enter_app()  # the current app again, for the module-level API

    async def _enter_app(self) -> None:
        await self.app.__aenter__()
        self._entered += 1

    # -- the producer API, for convenience --------------------------------------

    async def publish(
        self, msg: TaskMessage[Any], *, delay: float | timedelta | None = None, **options: Any
    ) -> str:
        """`App.publish` on the app."""
        return await self.app.publish(msg, delay=delay, **options)

    async def call(self, msg: TaskMessage[R], *, timeout: float = 10.0, retry: bool = False) -> R:
        """`App.call` on the app (its timeout is wall-clock seconds)."""
        return await self.app.call(msg, timeout=timeout, retry=retry)

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        """`App.submit` on the app."""
        return await self.app.submit(msg, retry=retry)

    # -- time -----------------------------------------------------------------

    @property
    def now(self) -> float:
        """Virtual seconds since the broker started."""
        return self.broker.now

    @property
    def beat(self) -> Beat | None:
        """The app's beat, publishing its schedules on the virtual clock (None when
        the app has none, or with ``beat=False``)."""
        return self._beat.beat if self._beat is not None else None

    def _next_due(self, target: float) -> float | None:
        """The virtual time of the next timed event: a retry or delayed message whose
        TTL runs out, or a schedule's tick at or before `target`; with no `target`
        (`join()`) a tick only on the way to such a message, since ticks never end."""
        due = self.broker.next_expiry
        tick = self._beat.next_due if self._beat is not None else None
        until = target if not math.isinf(target) else due
        if tick is None or until is None or tick > until:
            return due
        return tick if due is None else min(due, tick)

    def _advance_to(self, when: float) -> None:
        self.broker.advance_to(when)
        if self._beat is not None:
            self._beat.clock.ring()

    async def join(self, *, timeout: float | None = None) -> None:
        """Wait until every consumed queue, retry queue and delay queue is drained
        and no handler runs, moving virtual time to each retry and delayed message
        as it falls due. Raises `TimeoutError` when that takes more than `timeout`
        wall-clock seconds (the broker's `timeout` by default), naming what is busy."""
        await self.advance(math.inf, timeout=timeout)

    async def advance(self, seconds: float, *, timeout: float | None = None) -> None:
        """Move virtual time `seconds` ahead, letting everything that falls due on the
        way run (and settle) in order. Raises `TimeoutError` as `join()` does."""
        loop = asyncio.get_running_loop()
        limit = self.timeout if timeout is None else timeout
        deadline = loop.time() + limit
        target = self.broker.now + seconds
        while True:
            await self._idle(deadline, limit)
            due = self._next_due(target)
            if due is None or due > target:
                break
            self._advance_to(due)
        if not math.isinf(target):
            self._advance_to(target)
            await self._idle(deadline, limit)

    def _busy(self) -> list[str]:
        """What keeps the broker busy, and crash suspects waiting for the worker (it
        takes them one at a time, within a second)."""
        consumed = self.worker.queues if self.worker is not None else []
        waiting = [
            f"{len(q.ready)} suspect(s) on {q.name}"
            for name in consumed
            if (q := self.broker.queues.get(suspect_queue_name(name))) is not None and q.ready
        ]
        beat = self._beat.busy if self._beat is not None else []
        return self.broker.busy + waiting + beat

    async def _advance_when_idle(self) -> None:
        """With `auto_advance`: whenever nothing can run now, move virtual time to
        the next timed event (so an awaited `call()` or `result()` gets through
        back-offs and delays by itself)."""
        while True:
            await self._idle(None, math.inf)
            due = self._next_due(math.inf)
            if due is None:
                await self.broker.changed()
            else:
                self._advance_to(due)

    async def _idle(self, deadline: float | None, limit: float) -> None:
        while True:
            busy = self._busy()
            if not busy:
                # One more turn of the loop: work scheduled by what just finished.
                await asyncio.sleep(0)
                if not self._busy():
                    return
                continue
            try:
                async with asyncio.timeout_at(deadline):
                    await self.broker.changed()
            except TimeoutError:
                raise TimeoutError(
                    f"the test broker was still busy after {limit:g} s: {'; '.join(busy)}"
                ) from None

    # -- what happened ------------------------------------------------------------

    def published(self, queue: str) -> list[Message]:
        """Every message that entered `queue` (retries and redeliveries included), in order."""
        return list(self.broker.queue(queue).received)

    def messages(self, queue: str) -> list[Message]:
        """The messages waiting in `queue` now."""
        return list(self.broker.queue(queue).ready)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The messages in the dead-letter queue of `queue` (of every queue of the
        app when None), with their reasons."""
        names = [queue] if queue is not None else self.app.queues
        return [
            DeadLetter.of(m)
            for name in names
            if (dlq := self.broker.queues.get(dead_letter_queue_name(name))) is not None
            for m in dlq.ready
        ]

    def outcomes(self, message_id: str | None = None) -> list[Attempt]:
        """How each delivery (of `message_id`, or of every message) ended, in order."""
        return [a for a in self._recorder.attempts if message_id in (None, a.message_id)]
