"""Benchmarks that run workers as processes: `rabbitworker run --processes N` against
N baseline consumer processes on a prefilled queue, and a worker's resident memory
over a long run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aio_pika

from rabbitworker import App

from .common import Job, delete, prefill, queue_ready, unique
from .rw import delete_app

__all__ = ["ProcessRun", "consume_processes", "worker_memory"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ProcessRun:
    rate: float  # msg/s, first to last handled across all processes
    handled: int
    per_process: list[int]


@asynccontextmanager
async def prepared_queue(url: str, queue_type: str, side: str) -> AsyncIterator[tuple[str, str]]:
    """A unique exchange and queue as the side's consumers expect them; deleted after."""
    exchange, queue = unique("x"), unique("q")
    if side == "rabbitworker":
        app = App("bench", url=url, exchange=exchange, queue_type=queue_type)  # type: ignore[arg-type]

        @app.task(queue=queue)
        async def handle(msg: Job) -> None:
            pass

        try:
            async with app:
                yield exchange, queue
        finally:
            await delete_app(url, app)
        return
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": queue_type})
        await channel.close()
        yield exchange, queue
    finally:
        await delete(connection, queues=[queue])
        await connection.close()


def _spawn(
    side: str, processes: int, env: dict[str, str], log: Path
) -> list[subprocess.Popen[bytes]]:
    out = log.open("ab")
    if side == "rabbitworker":
        argv = [
            sys.executable, "-m", "rabbitworker", "run",
            "--app", "benchmarks.bench_app:app",
            "--queues", env["RWB_QUEUE"],
            "--processes", str(processes),
            "--log-level", "WARNING",
        ]  # fmt: skip
        return [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)]
    argv = [sys.executable, "-m", "benchmarks.raw_consumer"]
    return [
        subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        for _ in range(processes)
    ]


async def _wait_for(
    predicate: object, procs: list[subprocess.Popen[bytes]], log: Path, timeout: float
) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a consumer process exited early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.02)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _env(url: str, queue_type: str, exchange: str, queue: str, workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RABBITWORKER_URL": url,
        "RABBITWORKER_QUEUE_TYPE": queue_type,
        "RWB_EXCHANGE": exchange,
        "RWB_QUEUE": queue,
        "RWB_DIR": str(workdir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


async def consume_processes(
    url: str, queue_type: str, count: int, processes: int, side: str
) -> ProcessRun:
    """Consume `count` prefilled messages with `processes` worker processes of `side`
    ("rabbitworker" or "aio-pika")."""
    with tempfile.TemporaryDirectory(prefix="rwb-") as tmp:
        workdir = Path(tmp)
        log = workdir / "consumers.log"
        async with prepared_queue(url, queue_type, side) as (exchange, queue):
            connection = await aio_pika.connect(url)
            try:
                await prefill(connection, queue, count)
                procs = _spawn(
                    side, processes, _env(url, queue_type, exchange, queue, workdir), log
                )
                try:
                    await _wait_for(
                        lambda: len(list(workdir.glob("ready-*"))) >= processes, procs, log, 60
                    )
                    (workdir / "go").touch()

                    async def drained() -> bool:
                        return await queue_ready(connection, queue) == 0

                    await _wait_for(drained, procs, log, 60 + count / 500)
                finally:
                    _stop(procs)
            finally:
                await connection.close()
        stats = [json.loads(p.read_text()) for p in workdir.glob("stats-*.json")]
    if len(stats) != processes:
        raise RuntimeError(f"expected stats from {processes} process(es), got {len(stats)}")
    handled = sum(s["count"] for s in stats)
    span = max(s["last"] for s in stats) - min(s["first"] for s in stats if s["count"])
    return ProcessRun(handled / span, handled, sorted(s["count"] for s in stats))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def worker_memory(url: str, queue_type: str, count: int) -> dict[str, float]:
    """Resident memory (MiB) of one `rabbitworker run` process over `count` messages:
    before consuming, after the first 10%, at the end, and the peak."""
    with tempfile.TemporaryDirectory(prefix="rwb-") as tmp:
        workdir = Path(tmp)
        log = workdir / "worker.log"
        async with prepared_queue(url, queue_type, "rabbitworker") as (exchange, queue):
            connection = await aio_pika.connect(url)
            try:
                started = time.perf_counter()
                await prefill(connection, queue, count)
                prefill_s = time.perf_counter() - started
                print(f"  prefilled {count} messages in {prefill_s:.1f} s")
                procs = _spawn(
                    "rabbitworker", 1, _env(url, queue_type, exchange, queue, workdir), log
                )
                pid = procs[0].pid
                try:
                    await _wait_for(lambda: any(workdir.glob("ready-*")), procs, log, 60)
                    start = _rss_kib(pid)
                    (workdir / "go").touch()
                    started = time.perf_counter()
                    warm = peak = start
                    while True:
                        ready = await queue_ready(connection, queue)
                        rss = _rss_kib(pid)
                        peak = max(peak, rss)
                        if ready > count * 0.9:
                            warm = rss
                        if ready == 0:
                            break
                        if procs[0].poll() is not None:
                            raise RuntimeError(f"worker exited:\n{log.read_text()[-3000:]}")
                        await asyncio.sleep(0.25)
                    elapsed = time.perf_counter() - started
                    end = _rss_kib(pid)
                finally:
                    _stop(procs)
            finally:
                await connection.close()
        stats = [json.loads(p.read_text()) for p in workdir.glob("stats-*.json")]
    handled = sum(s["count"] for s in stats)
    span = max(s["last"] for s in stats) - min(s["first"] for s in stats if s["count"])
    return {
        "messages": count,
        "handled": handled,
        "rate": (handled - 1) / span if span > 0 else float("nan"),
        "prefill_s": prefill_s,
        "seconds": elapsed,
        "rss_start_mib": start / 1024,
        "rss_after_10pct_mib": warm / 1024,
        "rss_end_mib": end / 1024,
        "rss_peak_mib": peak / 1024,
    }
