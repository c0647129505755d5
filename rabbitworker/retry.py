"""Retry policies and the middleware that applies them: which failures retry,
after which delay, and when a message goes to its dead-letter queue instead."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import DecodeError, Reject, Retry
from .middleware import Middleware, Outcome
from .topology import quantize_delay_ms

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Exponential", "Retries", "RetryPolicy", "exponential"]


@dataclass(frozen=True)
class Exponential:
    """Back-off of `base * factor**(n-1)` seconds, capped at `max`, with +-`jitter` share."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.0

    def delay(self, failed_attempt: int) -> float:
        value = min(self.max, self.base * self.factor ** (failed_attempt - 1))
        if self.jitter:
            value *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, value)

    def nominal(self, failed_attempt: int) -> float:
        return min(self.max, self.base * self.factor ** (failed_attempt - 1))


def exponential(
    base: float = 1.0, factor: float = 2.0, max: float = 300.0, jitter: float = 0.0
) -> Exponential:
    """An exponential back-off for `RetryPolicy(backoff=...)`."""
    return Exponential(base, factor, max, jitter)


@dataclass(frozen=True)
class RetryPolicy:
    """How a task's failures are retried.

    `max_attempts` counts the first delivery. `backoff` is a list of delays in
    seconds (attempts past its end reuse the last one) or `exponential(...)`.
    Exceptions in `dead_letter_on` go to the dead-letter queue at once; otherwise
    those in `retry_on` are retried.
    """

    max_attempts: int = 3
    backoff: Sequence[float] | Exponential = (1.0, 10.0, 60.0)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dead_letter_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not isinstance(self.backoff, Exponential):
            if not self.backoff:
                object.__setattr__(self, "backoff", (0.0,))
            object.__setattr__(self, "backoff", tuple(float(b) for b in self.backoff))

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt `failed_attempt` (1-based) failed."""
        if isinstance(self.backoff, Exponential):
            return self.backoff.delay(failed_attempt)
        steps = self.backoff
        return steps[min(failed_attempt, len(steps)) - 1]

    def steps_ms(self) -> list[int]:
        """The distinct delays this policy uses, as retry queue TTLs."""
        out = set()
        for attempt in range(1, self.max_attempts):
            seconds = (
                self.backoff.nominal(attempt)
                if isinstance(self.backoff, Exponential)
                else self.delay(attempt)
            )
            if seconds > 0:
                out.add(quantize_delay_ms(seconds))
        return sorted(out)

    def retries(self, error: BaseException) -> bool:
        if isinstance(error, Retry):
            return True
        if isinstance(error, (Reject, DecodeError, *self.dead_letter_on)):
            return False
        return isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1)


class Retries(Middleware):
    """Turns a failed delivery into a retry or a dead letter, by the task's policy.

    RPC requests are not retried (their caller is waiting) unless the caller asked
    for it with `call(..., retry=True)`.
    """

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        if error is None:
            return
        policy = ctx.retry_policy
        if ctx.reply_to and not ctx.rpc_retry:
            policy = NO_RETRY
        if ctx.attempt >= policy.max_attempts or not policy.retries(error):
            ctx.outcome = Outcome.dead_letter(error)
            return
        if isinstance(error, Retry) and error.delay is not None:
            seconds = error.delay
        elif isinstance(error, Retry):
            seconds = 0.0
        else:
            seconds = policy.delay(ctx.attempt)
        delay_ms = quantize_delay_ms(seconds) if seconds > 0 else 0
        ctx.outcome = Outcome.retry(delay_ms, error)
