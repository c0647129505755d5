"""Processing one delivery into an `Outcome`: find its task, decode the body, run
the middleware and the handler (with its time limit). No broker I/O happens here,
so it can be tested without one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..context import Context, Publish
from ..errors import HandlerTimeout, RabbitWorkerError, UnknownMessageType
from ..message import decode_body
from ..middleware.base import Middleware, Outcome, overrides
from ..registry import Registry, Task
from ..transport import Delivery
from ..wire import attempt_of, check_size, new_message_id
from .threads import SyncThreads

__all__ = ["Processed", "Processor"]

log = logging.getLogger("rabbitworker.worker")


@dataclass(slots=True)
class Processed:
    """A delivery's outcome and what led to it: the handler's result, its context,
    when it started (epoch seconds) and how long it ran; no context and no times
    when no handler ran."""

    outcome: Outcome
    result: Any = None
    ctx: Context | None = None
    started_at: float | None = None
    duration: float | None = None


class Processor:
    """Turns deliveries into outcomes for one worker."""

    def __init__(
        self,
        registry: Registry,
        middleware: Sequence[Middleware],
        *,
        publish: Publish,
        max_message_size: int,
        threads: SyncThreads | None,
    ) -> None:
        self.registry = registry
        self.publish = publish
        self.max_message_size = max_message_size
        self.threads = threads
        # Hooks left as the base class's no-ops are not called at all.
        self._before = [m for m in middleware if overrides(m, "before_process")]
        self._after = [m for m in reversed(middleware) if overrides(m, "after_process")]

    async def process(self, delivery: Delivery, queue: str) -> Processed:
        """The outcome of `delivery` (consumed from `queue`) and its handler's result."""
        if not delivery.properties.message_id:
            # A producer that sent none (another language's client): the id given here
            # stays with the message through its retries and into the dead-letter queue.
            delivery.properties.message_id = new_message_id()
        task = self.registry.task_for(queue, delivery.type)
        try:
            if task is None:
                raise UnknownMessageType(
                    f"no handler for message type {delivery.type!r} on queue {queue!r}",
                    body=delivery.body,
                )
            check_size(delivery.body, self.max_message_size)
            msg = decode_body(task.message_type, delivery.body)
        except RabbitWorkerError as exc:
            log.error("message %s on %s cannot be handled: %s", delivery.message_id, queue, exc)
            return Processed(Outcome.dead_letter(exc))
        ctx = Context(
            task=task,
            queue=queue,
            routing_key=delivery.type,
            message_id=delivery.message_id,
            attempt=attempt_of(delivery.headers),
            headers=delivery.headers,
            publish=self.publish,
            correlation_id=delivery.properties.correlation_id,
            reply_to=delivery.properties.reply_to,
            redelivered=delivery.redelivered,
            published_at=delivery.properties.timestamp,
        )
        return await self._run(task, msg, ctx)

    async def _run(self, task: Task, msg: Any, ctx: Context) -> Processed:
        result: Any = None
        error: BaseException | None = None
        started_at, started = time.time(), time.perf_counter()
        try:
            for m in self._before:
                await m.before_process(ctx)
            if ctx.outcome is None:
                result = await self._call(task, msg, ctx)
        except Exception as exc:
            error = exc
        duration = time.perf_counter() - started
        if ctx.outcome is None:
            ctx.outcome = Outcome.ack() if error is None else Outcome.dead_letter(error)
        for m in self._after:
            try:
                await m.after_process(ctx, result, error)
            except Exception:
                log.exception(
                    "middleware %s failed on message %s", type(m).__name__, ctx.message_id
                )
        return Processed(ctx.outcome, result, ctx, started_at, duration)

    async def _call(self, task: Task, msg: Any, ctx: Context) -> Any:
        args = (msg, ctx) if task.takes_context else (msg,)
        timeout = task.timeout
        if not task.is_async:
            assert self.threads is not None
            what = f"sync handler {task.name} on message {ctx.message_id}"
            try:
                return await self.threads.run(task.fn, args, timeout, what)
            except HandlerTimeout:
                raise HandlerTimeout(f"{task.name} ran past its timeout of {timeout:g} s") from None
        if timeout is None:
            return await task.fn(*args)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await task.fn(*args)
        except TimeoutError:
            if not scope.expired():
                raise  # the handler's own TimeoutError, not our time limit
            raise HandlerTimeout(f"{task.name} ran past its timeout of {timeout:g} s") from None
