"""The results backend's rows: consuming with every message tracked in Redis against
the same worker untracked, and how long `App.result()` takes for a finished task
against a plain Redis read of the same key."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from rabbitworker import App

from .common import Job, job
from .rw import CONCURRENCY, PREFETCH, bench_app

__all__ = ["result_latency"]


async def result_latency(
    url: str, queue_type: str, results: str, calls: int
) -> tuple[list[float], list[float]]:
    """Seconds per `app.result()` of a task already finished, and per plain Redis
    HGET of its stored status (what the store reads underneath), over `calls` tasks."""
    from rabbitworker import Worker

    def register(app: App, queue: str) -> None:
        @app.task(queue=queue, results=True)
        async def handle(msg: Job) -> int:
            return msg.n

    async with bench_app(url, queue_type, register, results=results) as (app, _):
        worker = Worker(app, concurrency=CONCURRENCY, prefetch=PREFETCH)
        await worker.start()
        try:
            ids = [await app.publish(job(n)) for n in range(calls)]
            for message_id in ids:  # every one finished before timing starts
                await app.result(message_id, timeout=30)
            ours = []
            for message_id in ids:
                started = time.perf_counter()
                await app.result(message_id, timeout=30)
                ours.append(time.perf_counter() - started)
        finally:
            await worker.shutdown()
    client = aioredis.from_url(results)
    try:
        plain = []
        for message_id in ids:
            started = time.perf_counter()
            await client.hget(f"rabbitworker:result:{message_id}", "status")
            plain.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return plain, ours
