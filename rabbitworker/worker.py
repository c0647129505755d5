"""The worker: one consumer per queue with its own prefetch, a shared concurrency
limit, ack only after the handler and every follow-up publish, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from . import followup
from .acks import AckBatcher
from .app import App, Handler
from .connection import retry_across_reconnects
from .consumer import DirectQueue
from .context import Context
from .errors import (
    ConfigurationError,
    HandlerTimeout,
    MessageTooLarge,
    RabbitWorkerError,
    UnknownMessageType,
)
from .message import decode_body, encode_reply
from .middleware import Middleware, Outcome
from .rpc import RPC_RETRY_HEADER, error_reply_body

__all__ = ["Worker"]

log = logging.getLogger("rabbitworker.worker")


class _SyncThreads(ThreadPoolExecutor):
    """The thread pool for plain `def` handlers, counting the calls not yet finished.

    A thread cannot be cancelled, so a shutdown needs to know whether one is still
    running: the interpreter would otherwise wait for it at exit.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._count_lock = threading.Lock()
        self.busy = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._count_lock:
            self.busy += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[Any]) -> None:
        with self._count_lock:
            self.busy -= 1


class Worker:
    """Consumes the given queues of an app and runs their handlers.

    `concurrency` bounds the handlers running at once across all queues; `prefetch`
    bounds the unacknowledged deliveries per queue.
    """

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
        self.app.configure(concurrency=concurrency, prefetch=prefetch, grace=grace)
        settings = app.settings
        self.queues = list(queues) if queues else app.queues
        unknown = [q for q in self.queues if q not in app.handlers]
        if unknown:
            raise ConfigurationError(
                f"unknown queue(s) {', '.join(unknown)}; app {app.name!r} has: "
                f"{', '.join(app.queues) or '(none)'}"
            )
        self.concurrency = settings.concurrency
        self.prefetch = settings.prefetch
        self.grace = settings.grace
        self.max_message_size = settings.max_message_size
        self._limit = asyncio.Semaphore(self.concurrency)
        self._acks = AckBatcher()
        # Every delivery task; those still waiting for a concurrency slot; and the
        # ones whose handler runs, with (queue, message id) for the drain log.
        self._inflight: set[asyncio.Task[Any]] = set()
        self._waiting: set[asyncio.Task[Any]] = set()
        self._running: dict[asyncio.Task[Any], tuple[str, str]] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._channels: list[AbstractChannel] = []
        self._executor: _SyncThreads | None = None
        self._stopping = asyncio.Event()
        self._consumers_cancelled = asyncio.Event()
        self._forced = asyncio.Event()
        self.handed_back = 0
        self.handled = 0

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare the topology and start consuming every queue."""
        await self.app.connect()
        assert self.app.connection is not None
        if any(not h.is_async for q in self.queues for h in self.app.handlers[q].values()):
            self._executor = _SyncThreads(
                max_workers=self.concurrency, thread_name_prefix="rabbitworker-sync"
            )
        for middleware in self.app.middleware:
            await middleware.on_worker_start()
        for name in self.queues:
            await self._start_consumer(name)
        log.info(
            "worker consuming %s (prefetch %d, concurrency %d)",
            ", ".join(self.queues),
            self.prefetch,
            self.concurrency,
        )

    async def _start_consumer(self, name: str) -> None:
        """Consume queue `name` on a channel of its own, with the prefetch.

        A connection cut while this runs is waited out (up to the connect timeout)
        instead of crashing the start; once it runs, aio-pika restores it.
        """
        connection = self.app.connection
        assert connection is not None

        async def consume() -> tuple[AbstractChannel, AbstractQueue, str]:
            channel = await connection.channel(publisher_confirms=False)
            channel.QUEUE_CLASS = DirectQueue  # one task per delivery, not two
            await channel.set_qos(prefetch_count=self.prefetch)
            # Declared (passively) rather than looked up, so the robust channel knows the
            # queue and restores its consumer, with this prefetch, after a reconnect.
            queue = await channel.declare_queue(name, passive=True)
            tag = await queue.consume(functools.partial(self._on_message, name))
            return channel, queue, tag

        channel, queue, tag = await retry_across_reconnects(
            connection, f"consume {name}", consume, timeout=self.app.settings.connect_timeout
        )
        self._channels.append(channel)
        self._consumers.append((queue, tag))

    async def run(
        self, *, handle_signals: bool = True, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Run until `stop()` or SIGTERM/SIGINT, then drain and close.

        `on_ready` is called once every consumer is running (the supervisor uses it
        to tell a child that started from one that failed to).
        """
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

    @property
    def abandoned_threads(self) -> int:
        """Sync handlers still running in their threads; their results are dropped."""
        return self._executor.busy if self._executor is not None else 0

    async def shutdown(self) -> None:
        """Stop consuming, let in-flight handlers finish within the grace period,
        hand the rest back unacknowledged, and close."""
        self._stopping.set()
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), timeout=5)
        self._consumers.clear()
        self._consumers_cancelled.set()
        # Deliveries still waiting for a slot never start: they go back at once.
        for task in self._waiting:
            task.cancel()
        running = dict(self._running)
        if running:
            log.info(
                "draining: waiting up to %g s for %d running handler(s)", self.grace, len(running)
            )
        unfinished = await self._drain(set(self._inflight))
        interrupted = [running[t] for t in unfinished if t in running]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=5)
        for name, message_id in interrupted:
            log.warning(
                "message %s on %s did not finish in time; handed back to the broker",
                message_id,
                name,
            )
        if self._channels:  # it had started
            log.info(
                "worker stopped: %d in flight finished, %d handed back to the broker "
                "(%d not started, %d interrupted)",
                len(running) - len(interrupted),
                self.handed_back + len(interrupted),
                self.handed_back,
                len(interrupted),
            )
        threads = self.abandoned_threads
        if threads:
            log.warning(
                "%d sync handler(s) still running in threads; their messages go back to "
                "the broker and whatever they return is dropped",
                threads,
            )
        close_timeout = 2.0 if self._forced.is_set() else 30.0
        for middleware in reversed(self.app.middleware):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(middleware.on_worker_stop(), close_timeout)
        # Closing the channels is what returns interrupted messages to their queues.
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), close_timeout)
        self._channels.clear()
        try:
            await asyncio.wait_for(self.app.close(), close_timeout)
        except TimeoutError:
            log.warning("closing the connection timed out; exiting anyway")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, tasks: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
        """Wait for `tasks` until the grace period ends or a forced stop; return the
        ones still unfinished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
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

    async def _hand_back(self, queue: str, message: AbstractIncomingMessage) -> None:
        """Return a delivery whose handler never started to its queue."""
        self.handed_back += 1
        log.debug("message %s on %s handed back unstarted", message.message_id, queue)
        # Requeued before our consumer is gone, it could come straight back to us.
        await self._consumers_cancelled.wait()
        with contextlib.suppress(Exception):
            await self._acks.nack(message)

    # -- one delivery -------------------------------------------------------

    async def _on_message(self, queue: str, message: AbstractIncomingMessage) -> None:
        if self._stopping.is_set():
            await self._hand_back(queue, message)
            return
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            self._waiting.add(task)
            try:
                await self._limit.acquire()
            except asyncio.CancelledError:
                if not self._stopping.is_set():
                    raise
                await self._hand_back(queue, message)  # cancelled by shutdown()
                return
            finally:
                self._waiting.discard(task)
            try:
                # A slot that frees up during the drain must not start new work.
                if self._stopping.is_set():
                    await self._hand_back(queue, message)
                    return
                self._running[task] = (queue, message.message_id or "")
                await self._process(queue, message)
            finally:
                self._running.pop(task, None)
                self._limit.release()
        finally:
            self._inflight.discard(task)

    async def _process(self, queue: str, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        message_type = message.type or message.routing_key or ""
        handler = self.app.handlers[queue].get(message_type)
        reply_to = message.reply_to
        ctx = Context(
            app=self.app,
            queue=queue,
            routing_key=message_type,
            message_id=message.message_id or "",
            attempt=_attempt(headers),
            headers=headers,
            retry_policy=self.app.policy_for(handler) if handler else self.app.default_retry,
            correlation_id=message.correlation_id,
            reply_to=reply_to,
            redelivered=bool(message.redelivered),
            rpc_retry=bool(headers.get(RPC_RETRY_HEADER)),
        )
        try:
            if handler is None:
                raise UnknownMessageType(
                    f"no handler for message type {message_type!r} on queue {queue!r}",
                    body=message.body,
                )
            if len(message.body) > self.max_message_size:
                raise MessageTooLarge(
                    f"message of {len(message.body)} bytes is over the maximum of "
                    f"{self.max_message_size}"
                )
            msg = decode_body(handler.message_type, message.body)
        except RabbitWorkerError as exc:
            log.error("message %s on %s cannot be handled: %s", ctx.message_id, queue, exc)
            await self._settle(ctx, message, Outcome.dead_letter(exc), None)
            return
        await self._run(handler, msg, ctx, message)

    async def _run(
        self, handler: Handler, msg: Any, ctx: Context, message: AbstractIncomingMessage
    ) -> None:
        middleware = self.app.middleware
        result: Any = None
        error: BaseException | None = None
        try:
            for m in middleware:
                # Hooks left as the base class's no-ops are not awaited at all.
                if type(m).before_process is not Middleware.before_process:
                    await m.before_process(ctx)
            if ctx.outcome is None:
                result = await self._call(handler, msg, ctx)
        except Exception as exc:
            error = exc
        if ctx.outcome is None:
            ctx.outcome = Outcome.ack() if error is None else Outcome.dead_letter(error)
        for m in reversed(middleware):
            if type(m).after_process is Middleware.after_process:
                continue
            try:
                await m.after_process(ctx, result, error)
            except Exception:
                log.exception(
                    "middleware %s failed on message %s", type(m).__name__, ctx.message_id
                )
        await self._settle(ctx, message, ctx.outcome, result)

    async def _call(self, handler: Handler, msg: Any, ctx: Context) -> Any:
        args = (msg, ctx) if handler.takes_context else (msg,)
        timeout = handler.timeout
        if handler.is_async:
            if timeout is None:
                return await handler.fn(*args)
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    return await handler.fn(*args)
            except TimeoutError:
                if not scope.expired():
                    raise  # the handler's own TimeoutError, not our time limit
                raise HandlerTimeout(
                    f"{handler.name} ran past its timeout of {timeout:g} s"
                ) from None
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(handler.fn, *args))
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if not future.cancelled():
                raise  # the handler's own TimeoutError, not our time limit
            log.warning(
                "sync handler %s passed its timeout of %g s on message %s; its thread is "
                "abandoned and keeps running",
                handler.name,
                timeout,
                ctx.message_id,
            )
            raise HandlerTimeout(f"{handler.name} ran past its timeout of {timeout:g} s") from None

    async def _settle(
        self, ctx: Context, message: AbstractIncomingMessage, outcome: Outcome, result: Any
    ) -> None:
        """Publish what the outcome needs, wait for the confirms, then ack."""
        reply: bytes | None = None
        if outcome.kind == "ack" and ctx.reply_to:
            try:
                reply = encode_reply(result)
                if len(reply) > self.max_message_size:
                    raise MessageTooLarge(
                        f"the reply of {len(reply)} bytes is over the maximum of "
                        f"{self.max_message_size}"
                    )
            except Exception as exc:
                # A return value that JSON cannot carry, or too large to send, fails the
                # same way on every attempt: an error reply and a dead letter, at once.
                reply = None
                outcome = Outcome.dead_letter(exc)
        try:
            if outcome.kind == "ack":
                if reply is not None:
                    await followup.reply(self.app, ctx, reply, "ok")
            elif outcome.kind == "retry":
                await followup.retry(self.app, ctx, message, outcome)
            else:
                assert outcome.error is not None
                if ctx.reply_to:
                    await followup.reply(self.app, ctx, error_reply_body(outcome.error), "error")
                await followup.dead_letter(self.app, ctx, message, outcome.error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The message stays ours until acked; hand it back so nothing is lost.
            # On a quorum queue the delivery limit stops this from looping forever.
            log.error(
                "message %s on %s: follow-up publish failed (%s); returning it to the queue",
                ctx.message_id,
                ctx.queue,
                exc,
            )
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await self._acks.nack(message)
            return
        self.handled += 1
        try:
            await self._acks.ack(message)
        except Exception as exc:
            log.warning(
                "message %s on %s: ack failed (%s); the broker will deliver it again",
                ctx.message_id,
                ctx.queue,
                exc,
            )


def _attempt(headers: dict[str, Any]) -> int:
    try:
        return max(1, int(headers.get("x-attempt", 1)))
    except (TypeError, ValueError):
        return 1
