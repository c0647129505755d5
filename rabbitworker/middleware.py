"""Middleware: the hooks that cross-cutting behaviour (retries, de-duplication,
metrics, logging) plugs into, and the outcome a delivery ends with.

`before_process` hooks run in order before the handler, `after_process` hooks in
reverse order after it. A `before_process` hook may settle the outcome itself (for
example, acknowledge a duplicate), and the handler is then not called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Middleware", "Outcome"]


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
    """Base class; override the hooks you need."""

    async def before_process(self, ctx: Context) -> None:
        """Called before the handler; may set `ctx.outcome` to skip it."""

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        """Called after the handler with its result or error; may change `ctx.outcome`."""

    async def on_worker_start(self) -> None:
        """Called once when a worker has connected."""

    async def on_worker_stop(self) -> None:
        """Called once when a worker stops."""
