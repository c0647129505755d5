"""The middleware API: hooks that cross-cutting behaviour (retries, de-duplication,
metrics, tracing, rate limits) plugs into, named for the moment they run, and the
`Outcome` a delivery ends with.

`before_process` hooks run in order before the handler and `after_process` hooks in
reverse order after it; a `before_process` hook may settle the outcome itself (for
example acknowledge a duplicate), and the handler is then not called. A hook that
raises is logged and contained by the code that calls hooks (except `before_process`,
whose error fails the attempt like a handler's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..context import Context
    from ..transport import Delivery

__all__ = ["Middleware", "Outcome", "Settled", "overrides"]


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
    (its follow-up could not be confirmed, and it goes back to its queue). `queue` is
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


def overrides(middleware: Middleware, hook: str) -> bool:
    """Whether `middleware` overrides `hook`: the worker skips hooks left as no-ops."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)
