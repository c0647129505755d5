"""`python -m benchmarks --scaling`: how rabbitworker's costs grow with the work.
Four short tables: consume rate and worker RSS against the depth of the queue,
publish latency and broker queues against the number of distinct delays, RPC
latency against the calls in flight from one client, and consume rate against
the body size. `--scale 0.1` runs every size at a tenth (for development)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika

from rabbitworker import App, TaskMessage, Worker
from rabbitworker.topology import delay_queue_name, quantize_delay_ms

from . import procs, rw
from .common import Echo, Tally, delete, job, wire_message

__all__ = ["run"]

DEPTHS = (10_000, 100_000, 1_000_000)
DELAY_COUNTS = (10, 100, 1_000)
IN_FLIGHT = (10, 100, 1_000, 10_000)
BODIES = ((1024, "1 KB", 5_000), (64 * 1024, "64 KB", 2_000), (1024 * 1024, "1 MB", 200))
BLOB_KEY = "bench.blob"


class Blob(TaskMessage, routing_key=BLOB_KEY):
    data: str


def _table(title: str, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    sep = tuple("-" * w for w in widths)
    return "\n".join([title, line(head), line(sep), *(line(r) for r in rows), ""])


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def depth(url: str, qt: str, scale: float) -> tuple[str, list[dict[str, Any]]]:
    """A `rabbitworker run` process draining 10k, 100k and 1M waiting messages."""
    out, rows = [], []
    for n in DEPTHS:
        count = max(1_000, int(n * scale))
        mem = await procs.worker_memory(url, qt, count)
        print(
            f"  {count:,} waiting: {mem['rate']:,.0f} msg/s, RSS peak {mem['rss_peak_mib']:.1f} MiB"
        )
        out.append(mem)
        rows.append((f"{count:,}", f"{mem['rate']:,.0f}", f"{mem['rss_start_mib']:.1f}",
                     f"{mem['rss_peak_mib']:.1f}", f"{mem['rss_end_mib']:.1f}",
                     f"{mem['prefill_s']:.0f}+{mem['seconds']:.0f}"))  # fmt: skip
    first, last = out[0]["rss_peak_mib"], out[-1]["rss_peak_mib"]
    table = _table(
        f"consume (no-op) and worker RSS against the queue's depth, {qt} queue; "
        f"peak RSS {last / first - 1:+.1%} from the smallest to the deepest",
        ("waiting", "msg/s", "RSS start MiB", "peak MiB", "end MiB", "fill+drain s"),
        rows,
    )
    return table, out


def _delays(k: int) -> list[float]:
    """`k` distinct delays from one minute to one hour (seconds)."""
    return [60 + i * 3540 / k for i in range(k)]


async def delays(url: str, qt: str, scale: float) -> tuple[str, list[dict[str, Any]]]:
    """Publish latency, one at a time, cycling through k distinct delays."""
    out, rows = [], []
    for k in DELAY_COUNTS:
        count = max(k, int(2_000 * scale))
        wanted = _delays(k)
        async with rw.bench_app(url, qt, rw.no_handler) as (app, _):
            latencies = []
            for n in range(count):
                started = time.perf_counter()
                await app.publish(job(n), delay=wanted[n % k])
                latencies.append(time.perf_counter() - started)
            names = {delay_queue_name(app.exchange, quantize_delay_ms(d)) for d in wanted}
            queues = await _existing(url, names)
        p50, p99 = _pct(latencies, 50) * 1000, _pct(latencies, 99) * 1000
        out.append({"distinct": k, "publishes": count, "queues": queues, "p50": p50, "p99": p99})
        rows.append((str(k), f"{count:,}", str(queues), f"{p50:.2f}", f"{p99:.2f}"))
    table = _table(
        f"delayed publish against distinct delays (1 min to 1 h), {qt} queue",
        ("distinct delays", "publishes", "broker delay queues", "p50 ms", "p99 ms"),
        rows,
    )
    return table, out


async def _existing(url: str, names: set[str]) -> int:
    """How many of `names` exist on the broker (passive declare); deletes them."""
    connection = await aio_pika.connect(url)
    found = 0
    try:
        for name in names:
            channel = await connection.channel()
            try:
                await channel.declare_queue(name, passive=True)
                found += 1
            except aio_pika.exceptions.ChannelClosed:
                continue
            if not channel.is_closed:
                await channel.close()
        await delete(connection, queues=names)
    finally:
        await connection.close()
    return found


async def rpc(url: str, qt: str, scale: float) -> tuple[str, list[dict[str, Any]]]:
    """RPC latency with k calls outstanding from one client at any time."""
    out, rows = [], []
    for k in IN_FLIGHT:
        calls = max(2 * k, int(2_000 * scale))
        async with rw.rpc_worker(url, qt) as app:
            latencies: list[float] = []

            async def caller(app: App, todo: Iterator[int], latencies: list[float]) -> None:
                for n in todo:
                    started = time.perf_counter()
                    await app.call(Echo(n=n), timeout=120)
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            todo = iter(range(calls))
            await asyncio.gather(*(caller(app, todo, latencies) for _ in range(k)))
            rate = calls / (time.perf_counter() - started)
        p50, p99 = _pct(latencies, 50) * 1000, _pct(latencies, 99) * 1000
        out.append({"in_flight": k, "calls": calls, "calls_s": rate, "p50": p50, "p99": p99})
        rows.append((f"{k:,}", f"{calls:,}", f"{rate:,.0f}", f"{p50:.1f}", f"{p99:.1f}"))
    table = _table(
        f"RPC against calls in flight from one client, {qt} queue",
        ("in flight", "calls", "calls/s", "p50 ms", "p99 ms"),
        rows,
    )
    return table, out


async def _prefill_blobs(url: str, queue: str, body: bytes, count: int) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for start in range(0, count, 100):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(wire_message(body, BLOB_KEY), queue)
                    for _ in range(start, min(count, start + 100))
                )
            )
    finally:
        await connection.close()


async def bodies(url: str, qt: str, scale: float) -> tuple[str, list[dict[str, Any]]]:
    """An in-process worker draining messages of 1 KB, 64 KB and 1 MB."""
    out, rows = [], []
    for size, label, n in BODIES:
        count = max(50, int(n * scale))
        body = Blob(data="x" * (size - 11)).model_dump_json().encode()
        tally = Tally(count)

        def register(app: App, queue: str, tally: Tally = tally) -> None:
            @app.task(queue=queue)
            async def handle(msg: Blob) -> None:
                tally.hit()

        async with rw.bench_app(url, qt, register) as (app, queue):
            await _prefill_blobs(url, queue, body, count)
            worker = Worker(app, concurrency=rw.CONCURRENCY, prefetch=rw.PREFETCH)
            await worker.start()
            try:
                await tally.wait(timeout=120 + count * size / 1e6)
            finally:
                await worker.shutdown()
        mib_s = tally.rate * len(body) / 2**20
        out.append({"body": len(body), "messages": count, "msg_s": tally.rate, "mib_s": mib_s})
        rows.append((label, f"{count:,}", f"{tally.rate:,.0f}", f"{mib_s:,.1f}"))
    table = _table(
        f"consume (no-op, decoded) against body size, {qt} queue",
        ("body", "messages", "msg/s", "MiB/s"),
        rows,
    )
    return table, out


Curve = Callable[[str, str, float], Any]
CURVES: dict[str, Curve] = {"depth": depth, "delays": delays, "rpc": rpc, "bodies": bodies}


async def run(url: str, queue_types: list[str], scale: float, only: set[str]) -> dict[str, Any]:
    """Print each curve's table as it completes; returns the figures."""
    results: dict[str, Any] = {}
    for qt in queue_types:
        for name, curve in CURVES.items():
            if name not in only:
                continue
            started = time.perf_counter()
            table, figures = await curve(url, qt, scale)
            print(table + f"({time.perf_counter() - started:.0f} s)\n", flush=True)
            results[f"{qt}/{name}"] = {"table": table, "figures": figures}
    return results
