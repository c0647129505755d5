"""The rabbitworker side: the same work as the baseline, through `App.publish`, an
in-process `Worker` and `App.call`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika

from rabbitworker import App, Worker
from rabbitworker.topology import QueueType

from .common import Echo, EchoReply, Job, Tally, delete, job, prefill, unique

__all__ = [
    "consume",
    "delete_app",
    "publish",
    "publish_bulk",
    "publish_one_by_one",
    "rpc_concurrent",
    "rpc_latency",
]

CONCURRENCY = 100
PREFETCH = 100


async def delete_app(url: str, app: App) -> None:
    """Delete every exchange and queue the app's topology names."""
    topology = app.topology()
    connection = await aio_pika.connect(url)
    try:
        await delete(
            connection,
            queues=[q.name for q in topology.queues],
            exchanges=[x.name for x in topology.exchanges],
        )
    finally:
        await connection.close()


@asynccontextmanager
async def bench_app(
    url: str, queue_type: str, register: Callable[[App, str], None], **options: Any
) -> AsyncIterator[tuple[App, str]]:
    """A connected app on a unique exchange with one queue; deleted afterwards."""
    qt: QueueType = "quorum" if queue_type == "quorum" else "classic"
    app = App("bench", url=url, exchange=unique("x"), queue_type=qt, **options)
    queue = unique("q")
    register(app, queue)
    try:
        async with app:
            yield app, queue
    finally:
        await app.close()
        await delete_app(url, app)


def no_handler(app: App, queue: str) -> None:
    @app.task(queue=queue)
    async def handle(msg: Job) -> None:
        pass


async def publish(url: str, queue_type: str, count: int, batch: int) -> float:
    """Confirmed publishes per second through `App.publish`, `batch` at a time."""
    async with bench_app(url, queue_type, no_handler) as (app, _):
        await asyncio.gather(*(app.publish(job(n)) for n in range(min(batch, 200))))
        started = time.perf_counter()
        for start in range(0, count, batch):
            await asyncio.gather(
                *(app.publish(job(n)) for n in range(start, min(count, start + batch)))
            )
        return count / (time.perf_counter() - started)


async def publish_one_by_one(url: str, queue_type: str, count: int) -> float:
    """Confirmed publishes per second, one `await app.publish()` after another."""
    async with bench_app(url, queue_type, no_handler) as (app, _):
        for n in range(20):
            await app.publish(job(n))
        started = time.perf_counter()
        for n in range(count):
            await app.publish(job(n))
        return count / (time.perf_counter() - started)


async def publish_bulk(url: str, queue_type: str, count: int, window: int | None = None) -> float:
    """Confirmed publishes per second through `App.publish_many` (every result read)."""
    options = {} if window is None else {"window": window}
    async with bench_app(url, queue_type, no_handler) as (app, _):
        started = time.perf_counter()
        failed = 0
        async for result in app.publish_many((job(n) for n in range(count)), **options):
            failed += not result.ok
        rate = count / (time.perf_counter() - started)
        if failed:
            raise RuntimeError(f"{failed} of {count} bulk publishes failed")
        return rate


async def consume(
    url: str,
    queue_type: str,
    count: int,
    delay: float = 0.0,
    results: str | None = None,
    metrics: bool = False,
    cpu: list[float] | None = None,
) -> float:
    """Messages per second, first to last handled, by an in-process worker; with
    `results` (a store URL) every message's status and result are tracked there;
    with `metrics`, the middleware `run --metrics-port` adds (Prometheus metrics and
    the per-message log line, at DEBUG and so not written). `cpu` gets this process's
    CPU time per message (µs) from the worker's start to the last message."""
    tally = Tally(count)
    options: dict[str, Any] = {"results": results}
    if metrics:
        from rabbitworker.logs import MessageLog
        from rabbitworker.ops.metrics import Metrics

        options["middleware"] = [Metrics(), MessageLog(level=logging.DEBUG)]

    def register(app: App, queue: str) -> None:
        @app.task(queue=queue, results=results is not None)
        async def handle(msg: Job) -> None:
            if delay:
                await asyncio.sleep(delay)
            tally.hit()

    async with bench_app(url, queue_type, register, **options) as (app, queue):
        connection = await aio_pika.connect(url)
        try:
            await prefill(connection, queue, count)
        finally:
            await connection.close()
        worker = Worker(app, concurrency=CONCURRENCY, prefetch=PREFETCH)
        started = time.process_time()
        await worker.start()
        try:
            await tally.wait(timeout=60 + count * max(delay, 0.001))
            if cpu is not None:
                cpu.append((time.process_time() - started) / count * 1e6)
        finally:
            await worker.shutdown()
        return tally.rate


def echo_handler(app: App, queue: str) -> None:
    @app.task(queue=queue)
    async def echo(msg: Echo) -> EchoReply:
        return EchoReply(n=msg.n)


@asynccontextmanager
async def rpc_worker(url: str, queue_type: str) -> AsyncIterator[App]:
    """A worker serving the echo task and a caller: two apps, two connections, as a
    worker and a web node would have."""
    async with bench_app(url, queue_type, echo_handler) as (app, _):
        worker = Worker(app, concurrency=CONCURRENCY, prefetch=PREFETCH)
        await worker.start()
        try:
            caller = App("bench-caller", url=url, exchange=app.exchange)
            caller.register(Echo)
            async with caller:
                for n in range(20):  # warm-up
                    await caller.call(Echo(n=n), timeout=10)
                yield caller
        finally:
            await worker.shutdown()


async def rpc_latency(url: str, queue_type: str, calls: int) -> list[float]:
    """Seconds per call, one call at a time."""
    async with rpc_worker(url, queue_type) as app:
        out = []
        for n in range(calls):
            started = time.perf_counter()
            await app.call(Echo(n=n), timeout=10)
            out.append(time.perf_counter() - started)
        return out


async def rpc_concurrent(url: str, queue_type: str, calls: int, in_flight: int) -> float:
    """Calls per second with `in_flight` calls outstanding at any time."""
    async with rpc_worker(url, queue_type) as app:
        todo = iter(range(calls))

        async def caller() -> None:
            for n in todo:
                await app.call(Echo(n=n), timeout=10)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        return calls / (time.perf_counter() - started)
