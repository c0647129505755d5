"""Retry policies, as values: how many attempts, which failures retry, after which
delay. The `Retries` middleware (rabbitworker.middleware.retries) applies them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import DecodeError, Reject, Retry, WorkerCrashed
from .topology import quantize_delay_ms

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "Exponential", "RetryPolicy", "exponential"]


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
        """Whether `error` is one this policy retries (attempts left aside)."""
        if isinstance(error, Retry):
            return True
        if isinstance(error, (Reject, DecodeError, WorkerCrashed, *self.dead_letter_on)):
            return False
        return isinstance(error, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1)
# What a task without a policy of its own (and an app without a default) gets.
DEFAULT_RETRY = RetryPolicy()
