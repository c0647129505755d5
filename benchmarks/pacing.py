"""What pacing costs per message: an in-process worker consuming with no limit, with a
per-process `rate_limit` and with a fleet-wide one (in Redis), each limit set far
above what the worker reaches, so only its bookkeeping is measured; and one fleet
reservation against a plain Redis PING (the round trip underneath). Variants
alternate within each round, the median of the rounds is kept.

    .venv/bin/python -m benchmarks.pacing [--messages 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import aio_pika
import redis.asyncio as aioredis

from rabbitworker import App, RateLimit, Worker
from rabbitworker.pacing import FleetPace

from .common import Job, Tally, prefill, unique
from .rw import CONCURRENCY, PREFETCH, bench_app

__all__ = ["main"]

HIGH = "1000000/s"  # never reached: the limit's bookkeeping without its waiting


async def consume(url: str, redis_url: str, count: int, limit: str) -> float:
    """Messages per second through a worker whose task has `limit`."""
    tally = Tally(count)
    rate = {
        "none": None,
        "process": RateLimit(HIGH),
        "fleet": RateLimit(HIGH, scope="fleet", url=redis_url),
    }[limit]

    def register(app: App, queue: str) -> None:
        @app.task(queue=queue, rate_limit=rate)
        async def handle(msg: Job) -> None:
            tally.hit()

    async with bench_app(url, "classic", register) as (app, queue):
        connection = await aio_pika.connect(url)
        try:
            await prefill(connection, queue, count)
        finally:
            await connection.close()
        worker = Worker(app, concurrency=CONCURRENCY, prefetch=PREFETCH)
        await worker.start()
        try:
            await tally.wait(timeout=120)
        finally:
            await worker.shutdown()
        return tally.rate


async def round_trips(redis_url: str, count: int) -> tuple[float, float]:
    """Microseconds per fleet reservation and per plain PING."""
    pace = FleetPace(1_000_000, url=redis_url, key=f"rabbitworker:pace:{unique('bench')}")
    plain = aioredis.from_url(redis_url)
    try:
        started = time.perf_counter()
        for _ in range(count):
            await pace.reserve()
        reserve = (time.perf_counter() - started) / count * 1e6
        started = time.perf_counter()
        for _ in range(count):
            await plain.ping()
        ping = (time.perf_counter() - started) / count * 1e6
        return reserve, ping
    finally:
        await pace.close()
        await plain.aclose()


async def run(url: str, redis_url: str, messages: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {"none": [], "process": [], "fleet": []}
    trips: list[tuple[float, float]] = []
    for n in range(rounds):
        order = list(rates) if n % 2 == 0 else list(reversed(rates))
        for limit in order:
            rates[limit].append(await consume(url, redis_url, messages, limit))
        trips.append(await round_trips(redis_url, 2000))
    base = statistics.median(rates["none"])
    print(f"{messages} messages, median of {rounds} rounds (nproc {os.cpu_count()})")
    for limit, values in rates.items():
        rate = statistics.median(values)
        extra = (1 / rate - 1 / base) * 1e6
        print(
            f"  rate_limit {limit:<8} {rate:8.0f} msg/s  "
            f"ratio {rate / base:4.2f}  {extra:+6.0f} us/msg"
        )
    reserve = statistics.median(t[0] for t in trips)
    ping = statistics.median(t[1] for t in trips)
    print(f"  one fleet reservation {reserve:.0f} us; a plain Redis PING {ping:.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("RABBITWORKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.url, args.redis, args.messages, args.rounds))


if __name__ == "__main__":
    main()
