"""The middleware API: hooks that cross-cutting behaviour (retries, de-duplication,
metrics, tracing, rate limits) plugs into, named for the moment they run, and the
`Outcome` a delivery ends with.

`before_process` hooks run in order before the handler and `after_process` hooks in
reverse order after it; a `before_process` hook may settle the outcome itself (for
example acknowledge a duplicate), and the handler is then not called. A hook that
raises is logged and contained by the code that calls hooks (except `before_process`,
whose error fails the attempt like a handler's).

The publish hooks (`before_publish`, `after_publish`) run around every confirmed
publish of a producer (publish, call, follow-ups from a handler) and every RPC
reply a worker sends; they are plain functions, called on the event loop, and must
be quick. `after_call` sees each RPC call's latency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..context import Context
    from ..transport import Delivery
    from ..wire import Properties

__all__ = ["OUTCOME_NAMES", "Middleware", "Outcome", "PublishHooks", "Settled", "overrides"]

log = logging.getLogger("rabbitworker.middleware")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a delivery ends: acknowledged, retried after `delay_ms`, or dead-lettered."""

    kind: Literal["ack", "retry", "dead_letter"]
    delay_ms: int = 0
    error: BaseException | None = None

    @classmethod
    def ack(cls) -> Outcome:
        return _ACK

    @classmethod
    def retry(cls, delay_ms: int, error: BaseException | None = None) -> Outcome:
        return cls("retry", delay_ms, error)

    @classmethod
    def dead_letter(cls, error: BaseException) -> Outcome:
        return cls("dead_letter", 0, error)


_ACK = Outcome("ack")


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of a delivery, for the `on_settle` hook.

    `kind` is what was carried out: "ack", "retry", "dead_letter", or "handed_back"
    (its follow-up could not be confirmed, or the drain returns it unhandled or
    interrupted, then with `ctx` None; it goes back to its queue). `queue` is
    the work queue; `started_at` (epoch seconds) and `duration` (seconds) are the
    handler's, None when no handler ran (a body that did not decode).
    """

    delivery: Delivery
    queue: str
    kind: Literal["ack", "retry", "dead_letter", "handed_back"]
    error: BaseException | None = None
    delay_ms: int = 0
    result: Any = None
    started_at: float | None = None
    duration: float | None = None


# What a `Settled.kind` is called in metrics and logs.
OUTCOME_NAMES = {
    "ack": "ok",
    "retry": "retried",
    "dead_letter": "dead_lettered",
    "handed_back": "handed_back",
}


class Middleware:
    """Base class; override the hooks you need (hooks left as they are cost nothing)."""

    async def on_worker_start(self) -> None:
        """Called once when a worker has connected, before it consumes."""

    async def before_process(self, ctx: Context) -> None:
        """Called before the handler; may set `ctx.outcome` to skip it."""

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        """Called after the handler with its result or error; may change `ctx.outcome`."""

    async def on_settle(self, ctx: Context | None, settled: Settled) -> None:
        """Called once the outcome's follow-ups are confirmed, just before the ack (or
        before the nack of a delivery handed back). `ctx` is None for a delivery no
        handler saw (it did not decode)."""

    async def on_worker_stop(self) -> None:
        """Called once when a worker stops."""

    def before_publish(self, routing_key: str, properties: Properties) -> None:
        """Called before a publish; may add headers to `properties`."""

    def after_publish(
        self,
        routing_key: str,
        properties: Properties,
        duration: float,
        error: BaseException | None,
    ) -> None:
        """Called once the broker confirmed a publish (`duration` seconds after it
        started), or with the error that failed it."""

    def after_call(self, routing_key: str, duration: float, error: BaseException | None) -> None:
        """Called when an RPC call ends: with its reply after `duration` seconds, or
        with the error it raises."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """Whether `middleware` overrides `hook`: the worker skips hooks left as no-ops."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


class PublishHooks:
    """Calls the publish hooks of a list of middleware around a send; one that
    raises is logged and contained."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self._before = [m for m in middleware if overrides(m, "before_publish")]
        self._after = [m for m in reversed(middleware) if overrides(m, "after_publish")]
        self._call = [m for m in middleware if overrides(m, "after_call")]

    async def send(
        self, routing_key: str, properties: Properties, send: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `send()` between the publish hooks."""
        if not self._before and not self._after:
            await send()
            return
        for m in self._before:
            _contained(m.before_publish, routing_key, properties)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            await send()
        except BaseException as exc:
            error = exc
            raise
        finally:
            duration = time.perf_counter() - started
            for m in self._after:
                _contained(m.after_publish, routing_key, properties, duration, error)

    def called(self, routing_key: str, duration: float, error: BaseException | None) -> None:
        """Tell the `after_call` hooks of an RPC call that ended."""
        for m in self._call:
            _contained(m.after_call, routing_key, duration, error)


def _contained(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("middleware hook %s failed", getattr(hook, "__qualname__", hook))
