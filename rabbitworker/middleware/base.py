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

__all__ = ["Middleware", "Outcome", "overrides"]


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


class Middleware:
    """Base class; override the hooks you need (hooks left as they are cost nothing)."""

    async def on_worker_start(self) -> None:
        """Called once when a worker has connected, before it consumes."""

    async def before_process(self, ctx: Context) -> None:
        """Called before the handler; may set `ctx.outcome` to skip it."""

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        """Called after the handler with its result or error; may change `ctx.outcome`."""

    async def after_settle(self, ctx: Context, outcome: Outcome) -> None:
        """Called once the delivery was settled: its follow-ups confirmed and it was
        acked. `outcome` is what was carried out."""

    async def on_worker_stop(self) -> None:
        """Called once when a worker stops."""


def overrides(middleware: Middleware, hook: str) -> bool:
    """Whether `middleware` overrides `hook`: the worker skips hooks left as no-ops."""
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)
