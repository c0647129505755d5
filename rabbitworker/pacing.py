"""Pacing: when a task's handlers may start. A rate limit spaces the starts of a task
(per process, or across the fleet through Redis) and a per-task concurrency bounds
its handlers running at once in a process. `Pacing` is the worker's admission step:
a delivery waits here, before it takes one of the worker's shared slots, so a paced
task never holds up the others; what waits beyond the prefetch stays in the broker.

The fleet-wide limit keeps one number in Redis, the earliest time the next start may
happen (the "theoretical arrival time" of GCRA), and a script moves it on by one
interval per start: one round trip per message, no polling, no clock agreement
between hosts (the script reads Redis's clock).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import ConfigurationError
from .middleware.base import Middleware

if TYPE_CHECKING:
    from .registry import Task

__all__ = [
    "AHEAD_S",
    "FleetPace",
    "LocalPace",
    "Pace",
    "Pacing",
    "RateLimit",
    "TaskPacer",
    "parse_rate",
]

log = logging.getLogger("rabbitworker.pacing")

Scope = Literal["process", "fleet"]

# A process reserves at most this many seconds' worth of a task's starts ahead.
AHEAD_S = 0.05
# A paced delivery that may wait longer than this unacked is warned of at start.
LONG_WAIT_S = 15 * 60.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")


def parse_rate(text: str) -> float:
    """Starts per second of ``"20/s"``, ``"600/m"`` or ``"100/h"``; raises
    `ConfigurationError` for anything else."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigurationError(
            f"invalid rate limit {text!r}: use a positive number per s, m or h, like '20/s'"
        )
    return float(match.group(1)) / _UNITS[match.group(2)]


class RateLimit:
    """A rate limit on a task's handler starts.

    ``RateLimit("20/s")`` paces each worker process on its own (nothing to set up);
    ``RateLimit("100/s", scope="fleet")`` is shared by every worker process on every
    host, through Redis: `url`, else the app's results store when that is Redis.
    Tasks given the same `key` share one limit (say, one external API); by default
    each task has its own.
    """

    __slots__ = ("key", "per_second", "scope", "text", "url")

    def __init__(
        self,
        rate: str,
        *,
        scope: Scope = "process",
        url: str | None = None,
        key: str | None = None,
    ) -> None:
        if scope not in ("process", "fleet"):
            raise ConfigurationError(f"RateLimit scope must be 'process' or 'fleet', not {scope!r}")
        self.text = rate
        self.per_second = parse_rate(rate)
        self.scope: Scope = scope
        self.url = url
        self.key = key

    @classmethod
    def of(cls, value: str | RateLimit | None) -> RateLimit | None:
        return cls(value) if isinstance(value, str) else value

    def __repr__(self) -> str:
        return f"RateLimit({self.text!r}, scope={self.scope!r})"


class Pace(Protocol):
    """Hands out start times: `reserve()` is how long to wait for the next start."""

    async def reserve(self) -> float: ...

    async def close(self) -> None: ...


class LocalPace:
    """Starts spaced by 1/rate within this process (no burst)."""

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / per_second
        self._clock = clock
        self._next = 0.0

    async def reserve(self) -> float:
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval
        return start - now

    async def close(self) -> None:
        pass


# KEYS[1]: the time (microseconds, Redis's clock) the next start may happen;
# ARGV[1]: the interval in microseconds. Returns the wait in microseconds.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ttl = math.ceil((tat + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', tat + interval), 'PX', ttl)
return tat - now
"""


class FleetPace:
    """Starts spaced by 1/rate across every process that uses the same Redis key.

    While Redis cannot be reached (each call waits at most `timeout` seconds) the
    process paces itself at the full rate and says so once per outage: the fleet may
    then start up to N times the rate, but no message waits on Redis or fails."""

    def __init__(self, per_second: float, *, url: str, key: str, timeout: float = 1.0) -> None:
        from redis.asyncio import Redis

        self.interval_us = max(1, math.ceil(1_000_000 / per_second))
        self.key = key
        self._redis: Any = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script: Any = self._redis.register_script(_GCRA)
        self._fallback = LocalPace(per_second)
        self.degraded = False

    async def reserve(self) -> float:
        try:
            waited = await self._script(keys=[self.key], args=[self.interval_us])
        except Exception as exc:
            if not self.degraded:
                log.warning(
                    "fleet rate limit %s: Redis unreachable (%s); pacing this process "
                    "alone until it is back",
                    self.key,
                    exc,
                )
                self.degraded = True
            return await self._fallback.reserve()
        if self.degraded:
            log.warning("fleet rate limit %s: Redis is back", self.key)
            self.degraded = False
        return max(0, int(waited)) / 1_000_000

    async def close(self) -> None:
        await self._redis.aclose()


class TaskPacer:
    """One task's admission: its concurrency permits, then its turn under the rate.

    A process holds at most `ahead` reserved future starts of a task at once (a
    stopped process wastes no more than those): one for a slow rate, as many as
    AHEAD_S seconds of starts for a fast one, whose Redis round trips then overlap."""

    def __init__(self, *, pace: Pace | None, concurrency: int | None, ahead: int = 1) -> None:
        self.pace = pace
        self._permits = asyncio.Semaphore(concurrency) if concurrency else None
        self._turn = asyncio.Semaphore(ahead)

    async def admit(self) -> None:
        """Wait until the handler may start; `release()` once it ended."""
        if self._permits is not None:
            await self._permits.acquire()
        try:
            if self.pace is not None:
                async with self._turn:
                    wait = await self.pace.reserve()
                    if wait > 0:
                        await asyncio.sleep(wait)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._permits is not None:
            self._permits.release()


class Pacing(Middleware):
    """The worker's admission step for tasks with a `rate_limit` or `concurrency`."""

    def __init__(self, pacers: dict[tuple[str, str], TaskPacer], paces: list[Pace]) -> None:
        self._pacers = pacers
        self._paces = paces

    @classmethod
    def for_tasks(
        cls,
        tasks: Iterable[Task],
        *,
        namespace: str,
        results_url: str | None,
        prefetch: int = 1,
    ) -> Pacing | None:
        """The pacing of `tasks`, None when none is paced. Raises `ConfigurationError`
        for a fleet-wide limit without a Redis to hold it."""
        shared: dict[str, Pace] = {}
        pacers: dict[tuple[str, str], TaskPacer] = {}
        for task in tasks:
            limit = task.rate_limit
            if limit is None and not task.concurrency:
                continue
            if limit is not None:
                _warn_of_long_waits(task, limit, prefetch)
            pace = None
            if limit is not None:
                key = limit.key or f"{task.queue}:{task.message_type.routing_key}"
                pace = shared.get(key)
                if pace is None:
                    pace = shared[key] = _pace(limit, f"{namespace}:{key}", results_url)
            ahead = max(1, math.floor(limit.per_second * AHEAD_S)) if limit else 1
            pacers[task.queue, task.message_type.routing_key] = TaskPacer(
                pace=pace, concurrency=task.concurrency, ahead=ahead
            )
        return cls(pacers, list(shared.values())) if pacers else None

    def pacer(self, queue: str, message_type: str) -> TaskPacer | None:
        return self._pacers.get((queue, message_type))

    async def on_worker_stop(self) -> None:
        for pace in self._paces:
            await pace.close()


def _warn_of_long_waits(task: Task, limit: RateLimit, prefetch: int) -> None:
    # The last of `prefetch` deliveries waits prefetch / rate seconds unacked, and
    # RabbitMQ closes a channel whose delivery stays unacked past consumer_timeout.
    wait = prefetch / limit.per_second
    if wait > LONG_WAIT_S:
        log.warning(
            "task %s: with prefetch %d at %s a delivery may wait %.0f s unacked, past "
            "RabbitMQ's consumer_timeout (30 min by default): lower the prefetch of %s",
            task.name,
            prefetch,
            limit.text,
            wait,
            task.queue,
        )


def _pace(limit: RateLimit, key: str, results_url: str | None) -> Pace:
    if limit.scope == "process":
        return LocalPace(limit.per_second)
    url = limit.url or results_url
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"the fleet-wide {limit!r} needs a Redis: RateLimit(..., url='redis://...') "
            "or App(..., results='redis://...')"
        )
    return FleetPace(limit.per_second, url=url, key=f"rabbitworker:pace:{key}")
