"""The `Retries` middleware: turns a failed attempt into a retry or a dead letter by
the task's `RetryPolicy`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import Retry
from ..policy import NO_RETRY
from ..topology import quantize_delay_ms
from ..wire import rpc_retry_requested
from .base import Middleware, Outcome

if TYPE_CHECKING:
    from ..context import Context

__all__ = ["Retries"]


class Retries(Middleware):
    """Retries a failed attempt after the policy's back-off while attempts are left;
    dead-letters it otherwise.

    The policy is the task's own (`@app.task(retry=...)`, else the app's default).
    RPC requests are not retried (their caller is waiting) unless the caller asked
    for it with `call(..., retry=True)`.
    """

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        if error is None:
            return
        policy = ctx.task.retry
        if ctx.reply_to and not rpc_retry_requested(ctx.headers):
            policy = NO_RETRY
        if ctx.attempt >= policy.max_attempts or not policy.retries(error):
            ctx.outcome = Outcome.dead_letter(error)
            return
        # Retry() asks for "now" (or its own delay); any other error takes the back-off.
        seconds = (error.delay or 0.0) if isinstance(error, Retry) else policy.delay(ctx.attempt)
        delay_ms = quantize_delay_ms(seconds) if seconds > 0 else 0
        ctx.outcome = Outcome.retry(delay_ms, error)
