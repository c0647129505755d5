"""The worker's life: start (connect, build its parts, consume each queue, take its
suspects), run until stopped, then drain (stop consuming, let running handlers
finish within the grace period, hand the rest back) and close; and what it reports
of itself meanwhile (`Worker.stats()`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..middleware import Middleware
from ..registry import Task
from ..transport import Channel, Consumer
from .assembly import assemble
from .dispatch import Dispatcher
from .stats import InFlight, WorkerStats
from .suspects import SuspectIntake
from .threads import SyncThreads
from .watchdog import LoopWatchdog, innermost_of

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Worker"]

log = logging.getLogger("rabbitworker.worker")

# How long a consumer cancel may take before the drain goes on without it (a broker
# that stopped answering should not hold up the shutdown).
CANCEL_TIMEOUT_S = 5.0
# After the grace period, cancelled handlers get this long to hand their messages back.
HAND_BACK_TIMEOUT_S = 5.0
# Closing channels, middleware and the connection: generous normally, short after a
# forced stop (a second SIGINT), when the operator wants the process gone.
CLOSE_TIMEOUT_S = 30.0
FORCED_CLOSE_TIMEOUT_S = 2.0


class Worker:
    """Consumes the given queues of an app and runs their handlers: `concurrency`
    bounds the handlers running at once across all queues, `prefetch` the unacknowledged
    deliveries per queue; options left as None come from the app's settings. Raises
    `ConfigurationError` for a queue the app does not have."""

    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        grace: float | None = None,
    ) -> None:
        self.app = app
        settings = app.settings
        self.queues = list(queues) if queues else app.queues
        unknown = [q for q in self.queues if q not in app.registry.tasks]
        if unknown:
            raise ConfigurationError(
                f"unknown queue(s) {', '.join(unknown)}; app {app.name!r} has: "
                f"{', '.join(app.queues) or '(none)'}"
            )
        self.concurrency = concurrency or settings.concurrency
        self.prefetch = prefetch or settings.prefetch
        self.grace = settings.grace if grace is None else grace
        self._consumers: list[Consumer] = []
        self._intakes: dict[str, SuspectIntake] = {}
        self._threads: SyncThreads | None = None
        self._dispatch: Dispatcher | None = None
        self._watchdog: LoopWatchdog | None = None
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._started_at: datetime | None = None
        self.exhausted = False
        self.middleware: list[Middleware] = list(app.middleware)

    # -- starting -----------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare the topology and start consuming every queue."""
        await self.app.connect()
        self._started_at = datetime.now(UTC)
        tasks = [t for q in self.queues for t in self.app.registry.tasks[q].values()]
        parts = assemble(
            self.app,
            tasks,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            on_threads_exhausted=self._on_threads_exhausted,
            on_suspects_moved=self._suspects_moved,
        )
        self._dispatch, self._threads = parts.dispatcher, parts.threads
        self.middleware = parts.middleware
        for middleware in self.middleware:
            await middleware.on_worker_start()
        for name in self.queues:
            await self._consume(name)
        self._watch_the_loop(tasks)
        log.info(
            "worker consuming %s (prefetch %d, concurrency %d)",
            ", ".join(self.queues),
            self.prefetch,
            self.concurrency,
        )

    def _watch_the_loop(self, tasks: list[Task]) -> None:
        threshold = self.app.settings.blocked_loop_warning
        if threshold > 0:
            codes = {t.fn.__code__: t.name for t in tasks if hasattr(t.fn, "__code__")}
            self._watchdog = LoopWatchdog(
                asyncio.get_running_loop(),
                threshold,
                functools.partial(self._describe_block, codes),
            )
            self._watchdog.start()

    async def _consume(self, queue: str) -> None:
        dispatch = self._dispatch
        assert dispatch is not None
        transport = self.app.session.transport
        on_closed = functools.partial(self._channel_closed, queue)
        self._consumers.append(
            await transport.consume(
                queue,
                functools.partial(dispatch.on_work, queue),
                prefetch=self.prefetch,
                on_closed=on_closed,
                concurrency=self.concurrency,
            )
        )
        intake = SuspectIntake(
            transport, queue, dispatch.gate, functools.partial(dispatch.on_suspect, queue)
        )
        self._intakes[queue] = intake
        intake.start()

    def _suspects_moved(self, queue: str) -> None:
        intake = self._intakes.get(queue)
        if intake is not None:
            intake.wake()

    def _channel_closed(self, queue: str, channel: Channel, reason: str, by_broker: bool) -> None:
        if self._dispatch is not None and not self._stopping.is_set():
            self._dispatch.channel_closed(queue, channel, reason, by_broker)

    def _describe_block(self, codes: dict[Any, str], frame: FrameType | None) -> str:
        name, where = innermost_of(frame, codes)
        task = asyncio.current_task(self._watchdog.loop) if self._watchdog else None
        held = self._dispatch.held.get(task) if self._dispatch and task else None
        what = f"handler {name}" if name else "code outside any handler"
        if held is not None:
            what += f" (message {held.delivery.message_id} on {held.queue})"
        return f"{what} at {where}"

    def _on_threads_exhausted(self) -> None:
        if self.exhausted:
            return
        log.error(
            "%d sync handler threads are stuck past their timeout; stopping the worker so "
            "that its process can be restarted (max_abandoned_threads)",
            self.app.settings.max_abandoned_threads,
        )
        self.exhausted = True
        self._stopping.set()  # called on the loop, by the handler that timed out

    # -- running ------------------------------------------------------------

    async def run(
        self, *, handle_signals: bool = True, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Run until `stop()` or SIGTERM/SIGINT, then drain and close; `on_ready` is
        called once every consumer is running (the supervisor's sign of a good start)."""
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
            else:
                # A signal while still connecting: there is nothing to drain yet.
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            if on_ready is not None and not self._stopping.is_set():
                on_ready()
            await stopping
        finally:
            starting.cancel()
            stopping.cancel()
            try:
                await self.shutdown()
            finally:
                if handle_signals:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        # A second SIGINT (Ctrl-C twice) forces a quick exit; a repeated SIGTERM
        # changes nothing, so a process manager that resends it cannot cut the drain.
        if self._stopping.is_set():
            if sig == signal.SIGINT and not self._forced.is_set():
                log.warning(
                    "second %s: stopping now, unfinished messages go back to the queue",
                    sig.name,
                )
                self._forced.set()
            return
        log.info("%s received: draining (grace %g s)", sig.name, self.grace)
        self._stopping.set()

    def stop(self, *, force: bool = False) -> None:
        """Ask a running worker to drain and stop; `force` skips the grace period."""
        self._stopping.set()
        if force:
            self._forced.set()

    @property
    def forced(self) -> bool:
        """True when the stop skipped the grace period (a second SIGINT)."""
        return self._forced.is_set()

    def stats(self) -> WorkerStats:
        """What this worker is doing and has done, now."""
        dispatch, threads = self._dispatch, self._threads
        outcomes: dict[str, int] = {}
        in_flight: tuple[InFlight, ...] = ()
        waiting: dict[str, int] = {}
        if dispatch is not None:  # started
            outcomes, in_flight = dict(dispatch.handled), tuple(dispatch.in_flight())
            waiting = dispatch.waiting_by_queue()
        return WorkerStats(
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(self.queues),
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            started_at=self._started_at,
            outcomes=outcomes,
            in_flight=in_flight,
            waiting={q: waiting.get(q, 0) for q in self.queues},
            handed_back=dispatch.handed_back if dispatch is not None else 0,
            suspects_moved=dispatch.suspects.moved if dispatch is not None else 0,
            abandoned_threads=threads.abandoned if threads is not None else 0,
            abandoned_threads_total=threads.abandoned_total if threads is not None else 0,
            blocked_loop_warnings=self._watchdog.warnings if self._watchdog is not None else 0,
            connected=self._connected(),
            consuming=bool(self._consumers) and not self._stopping.is_set(),
            draining=self._stopping.is_set(),
        )

    def _connected(self) -> bool:
        try:
            return self.app.session.transport.connected
        except ConfigurationError:  # no session: not connected (yet, or any more)
            return False

    # -- stopping -----------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop consuming, let running handlers finish within the grace period, hand
        the rest back, and close."""
        self._stopping.set()
        dispatch = self._dispatch
        if dispatch is not None:
            dispatch.stopping.set()
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.cancel(), CANCEL_TIMEOUT_S)
        self._consumers.clear()
        # A suspect being handled is waited for like a running handler.
        taking = {t for t in (i.stop() for i in self._intakes.values()) if t is not None}
        self._intakes.clear()
        if dispatch is not None:
            await self._drain(dispatch, taking)
        if self._watchdog is not None:
            self._watchdog.stop()
        await self._close()

    async def _close(self) -> None:
        close_timeout = FORCED_CLOSE_TIMEOUT_S if self.forced else CLOSE_TIMEOUT_S
        for middleware in reversed(self.middleware):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(middleware.on_worker_stop(), close_timeout)
        try:
            await asyncio.wait_for(self.app.close(), close_timeout)
        except TimeoutError:
            log.warning("closing the connection timed out; exiting anyway")
        if self._threads is not None:
            if self._threads.busy:
                log.warning(
                    "%d sync handler(s) still running in threads; whatever they return is "
                    "dropped (their messages were settled or went back to the broker)",
                    self._threads.busy,
                )
            self._threads.shutdown()

    async def _drain(self, dispatch: Dispatcher, taking: set[asyncio.Task[None]]) -> None:
        dispatch.consumers_cancelled.set()
        # Deliveries still waiting for a slot never start: they go back at once.
        for task in dispatch.waiting:
            task.cancel()
        running = dispatch.running
        if running:
            log.info(
                "draining: waiting up to %g s for %d running handler(s)", self.grace, len(running)
            )
        unfinished = await self._wait(set(dispatch.held) | taking, self.grace)
        interrupted = [running[t] for t in unfinished if t in running]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=HAND_BACK_TIMEOUT_S)
        for held in interrupted:
            log.warning(
                "message %s on %s did not finish in time; handed back to the broker",
                held.delivery.message_id,
                held.queue,
            )
        log.info(
            "worker stopped: %d in flight finished, %d handed back to the broker "
            "(%d not started, %d interrupted)",
            len(running) - len(interrupted),
            dispatch.handed_back,
            dispatch.handed_back - len(interrupted),
            len(interrupted),
        )

    async def _wait(self, tasks: set[asyncio.Task[Any]], grace: float) -> set[asyncio.Task[Any]]:
        """Wait for `tasks` until the grace period ends or a forced stop; return the
        ones still unfinished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            while tasks and not self._forced.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                done, _ = await asyncio.wait(
                    tasks | {forced}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                tasks -= done
        finally:
            forced.cancel()
        return tasks
