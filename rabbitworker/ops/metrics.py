"""Prometheus metrics: the `Metrics` middleware (messages by outcome, handler
durations, retries and dead letters by error type, publishes and their confirm
latency, RPC call latency) and the `Sampler` of a running worker's gauges
(in flight, waiting, abandoned threads) and its counters of reconnects and
blocked-loop warnings.

Needs prometheus-client (`pip install 'rabbitworker[metrics]'`). The instruments
live in prometheus-client's default registry, created once per process; under a
supervisor (`--processes N`) each worker writes them to the shared
`PROMETHEUS_MULTIPROC_DIR` and the supervisor serves their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..middleware.base import OUTCOME_NAMES, Middleware, Settled
from ..wire import error_type, routing_label

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    from ..context import Context
    from ..wire import Properties
    from ..worker import Worker

__all__ = ["Instruments", "Metrics", "Sampler", "instruments", "render", "require"]

SAMPLE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Instruments:
    """Every rabbitworker metric, by role."""

    messages: Counter
    duration: Histogram
    in_flight: Gauge
    waiting: Gauge
    retries: Counter
    dead_letters: Counter
    publishes: Counter
    confirm: Histogram
    rpc: Histogram
    reconnects: Counter
    abandoned_threads: Counter
    blocked_loop: Counter


def require() -> None:
    """Raises `ConfigurationError` when prometheus-client is not installed."""
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'rabbitworker[metrics]'"
        )


@functools.cache
def instruments() -> Instruments:
    """The metrics of this process, registered once. Raises `ConfigurationError`
    when prometheus-client is not installed."""
    require()
    from prometheus_client import Counter, Gauge, Histogram

    qt = ("queue", "type")
    return Instruments(
        messages=Counter("rabbitworker_messages", "Messages handled, by outcome", [*qt, "outcome"]),
        duration=Histogram("rabbitworker_handler_duration_seconds", "Handler run time", qt),
        in_flight=Gauge(
            "rabbitworker_messages_in_flight",
            "Handlers running",
            ["queue"],
            multiprocess_mode="livesum",
        ),
        waiting=Gauge(
            "rabbitworker_messages_waiting",
            "Deliveries held, waiting for a concurrency slot",
            ["queue"],
            multiprocess_mode="livesum",
        ),
        retries=Counter("rabbitworker_retries", "Retries, by error type", [*qt, "error"]),
        dead_letters=Counter(
            "rabbitworker_dead_letters", "Dead letters, by error type", [*qt, "error"]
        ),
        publishes=Counter(
            "rabbitworker_publishes", "Publishes, by outcome", ["routing_key", "outcome"]
        ),
        confirm=Histogram(
            "rabbitworker_publish_confirm_seconds", "Time to the broker's confirm", ["routing_key"]
        ),
        rpc=Histogram(
            "rabbitworker_rpc_call_seconds", "RPC call latency", ["routing_key", "outcome"]
        ),
        reconnects=Counter("rabbitworker_reconnects", "Reconnects to the broker"),
        abandoned_threads=Counter(
            "rabbitworker_abandoned_threads", "Sync handler threads abandoned past their timeout"
        ),
        blocked_loop=Counter(
            "rabbitworker_blocked_loop_warnings", "Warnings of an event loop blocked too long"
        ),
    )


def render() -> tuple[bytes, str]:
    """This process's metrics in the text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Metrics(Middleware):
    """Counts what happens to messages and publishes (see the module docstring)."""

    def __init__(self) -> None:
        self.m = instruments()
        # The labelled children of each (queue, type, outcome), looked up once: a
        # `labels()` call per message would cost more than the counting.
        self._counted: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def _children(self, queue: str, mtype: str, kind: str) -> tuple[Any, Any]:
        key = (queue, mtype, kind)
        found = self._counted.get(key)
        if found is None:
            found = self._counted[key] = (
                self.m.messages.labels(queue, mtype, OUTCOME_NAMES[kind]),
                self.m.duration.labels(queue, mtype),
            )
        return found

    async def on_settle(self, ctx: Context | None, settled: Settled) -> None:
        queue, kind = settled.queue, settled.kind
        mtype = settled.delivery.type
        counter, histogram = self._children(queue, mtype, kind)
        counter.inc()
        if settled.duration is not None:
            histogram.observe(settled.duration)
        m = self.m
        if settled.error is not None and kind in ("retry", "dead_letter"):
            counter = m.retries if kind == "retry" else m.dead_letters
            counter.labels(queue, mtype, error_type(settled.error)).inc()

    def after_publish(
        self,
        routing_key: str,
        properties: Properties,
        duration: float,
        error: BaseException | None,
    ) -> None:
        key = routing_label(routing_key)
        self.m.publishes.labels(key, "confirmed" if error is None else "failed").inc()
        if error is None:
            self.m.confirm.labels(key).observe(duration)

    def after_call(self, routing_key: str, duration: float, error: BaseException | None) -> None:
        outcome = "ok" if error is None else type(error).__name__
        self.m.rpc.labels(routing_key, outcome).observe(duration)


class Sampler:
    """Copies a running worker's gauges into the metrics every second, counts its
    reconnects, and calls `also()` on each tick (the readiness file of a
    supervised worker)."""

    def __init__(self, worker: Worker, *, metrics: bool, also: Any = None) -> None:
        self.worker = worker
        self.m = instruments() if metrics else None
        self.also = also
        self._seen = (0, 0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.m is not None:
            self.worker.app.session.transport.on_connection_change(self._connection_changed)
        self._task = asyncio.ensure_future(self._run())

    def _connection_changed(self, connected: bool) -> None:
        if connected and self.m is not None:
            self.m.reconnects.inc()

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        """Take one sample now."""
        if self.also is not None:
            self.also()
        m = self.m
        if m is None:
            return
        stats = self.worker.stats()
        for queue in stats.queues:
            m.in_flight.labels(queue).set(stats.running(queue))
            m.waiting.labels(queue).set(stats.waiting[queue])
        seen = (stats.abandoned_threads_total, stats.blocked_loop_warnings)
        m.abandoned_threads.inc(seen[0] - self._seen[0])
        m.blocked_loop.inc(seen[1] - self._seen[1])
        self._seen = seen

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
