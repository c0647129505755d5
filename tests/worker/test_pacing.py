"""Pacing against a real broker (and Redis for the fleet-wide limit): a task limited
to 20/s fed 200 messages takes at least 9.5 s, in one worker and across two worker
processes, while the messages waiting for their turn stay in the broker; a task with
concurrency=3 never runs more than 3 at once and does not slow another task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from support import eventually, queue_depth, read_record

from rabbitworker import App, ConfigurationError, RateLimit, TaskMessage, Worker
from rabbitworker.pacing import FleetPace, LocalPace, Pacing, parse_rate

PREFETCH = 10
COUNT = 200


def test_rates_are_read_per_second_minute_or_hour() -> None:
    assert parse_rate("20/s") == 20
    assert parse_rate("120/m") == 2
    assert parse_rate(" 36 / h ") == 0.01
    for bad in ("20", "0/s", "20/d", "fast"):
        with pytest.raises(ConfigurationError, match="invalid rate limit"):
            parse_rate(bad)
    with pytest.raises(ConfigurationError, match="scope"):
        RateLimit("1/s", scope="host")  # type: ignore[arg-type]


async def test_a_local_pace_spaces_starts_by_one_interval_without_a_burst() -> None:
    now = [100.0]
    pace = LocalPace(4, clock=lambda: now[0])
    assert [await pace.reserve() for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] += 10  # idle for a while: no credit is saved up
    assert [await pace.reserve() for _ in range(2)] == [0.0, 0.25]


async def test_two_fleet_paces_on_one_redis_key_share_the_rate(redis_url: str, prefix: str) -> None:
    a = FleetPace(10, url=redis_url, key=f"{prefix}:pace")
    b = FleetPace(10, url=redis_url, key=f"{prefix}:pace")
    try:
        waits = [await p.reserve() for p in (a, b, a, b)]
        assert waits[0] == pytest.approx(0, abs=0.02)
        assert waits[1:] == pytest.approx([0.1, 0.2, 0.3], abs=0.03)
    finally:
        await a.close()
        await b.close()


async def test_a_fleet_pace_without_its_redis_paces_the_process_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pace = FleetPace(10, url="redis://127.0.0.1:1/0", key="unreachable")
    try:
        waits = [await pace.reserve() for _ in range(3)]
    finally:
        await pace.close()
    assert waits == pytest.approx([0, 0.1, 0.2], abs=0.05)
    assert pace.degraded
    assert sum("Redis unreachable" in r.message for r in caplog.records) == 1


def test_a_fleet_limit_without_a_redis_is_a_configuration_error_a_slow_one_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Job(TaskMessage, routing_key="pacing.job"):
        pass

    class Report(TaskMessage, routing_key="pacing.report"):
        pass

    app = App("pacing")

    @app.task(queue="jobs", rate_limit=RateLimit("5/s", scope="fleet"))
    async def job(msg: Job) -> None:
        pass

    @app.task(queue="reports", rate_limit="100/h")
    async def report(msg: Report) -> None:
        pass

    pacing = Pacing.for_tasks(
        app.registry.tasks["reports"].values(), namespace="x", results_url=None, prefetch=100
    )
    assert pacing is not None and pacing.pacer("reports", "pacing.report") is not None
    assert "may wait 3600 s unacked" in caplog.text
    tasks = app.registry.tasks["jobs"].values()
    with pytest.raises(ConfigurationError, match="needs a Redis"):
        Pacing.for_tasks(tasks, namespace="x", results_url=None)
    with pytest.raises(ConfigurationError, match="concurrency must be at least 1"):
        app.task(queue="jobs", concurrency=0)(job)


async def watch_the_queue(
    amqp: aio_pika.abc.AbstractRobustConnection, queue: str, started: Callable[[], int]
) -> int:
    """Until every message started: the most deliveries held by workers and not yet
    started (the broker's ready count is read before the starts, so this never
    overcounts)."""
    most = 0
    while started() < COUNT:
        ready = await queue_depth(amqp, queue)
        most = max(most, COUNT - ready - started())
        await asyncio.sleep(0.05)
    return most


async def test_a_task_limited_to_20_per_second_takes_9_5_s_for_200_messages(
    make_app: Callable[..., App],
    start_worker: Callable[..., Awaitable[Worker]],
    amqp: aio_pika.abc.AbstractRobustConnection,
    prefix: str,
) -> None:
    class Paced(TaskMessage, routing_key=f"{prefix}.paced"):
        n: int

    app = make_app()
    starts: list[float] = []

    @app.task(queue=f"{prefix}.paced", rate_limit="20/s")
    async def paced(msg: Paced) -> None:
        starts.append(time.monotonic())

    await start_worker(app, prefetch=PREFETCH)
    await asyncio.gather(*(app.publish(Paced(n=n)) for n in range(COUNT)))
    waiting = await asyncio.wait_for(
        watch_the_queue(amqp, f"{prefix}.paced", lambda: len(starts)), 30
    )
    took = starts[-1] - starts[0]
    print(f"\n200 messages at 20/s, one worker: {took:.2f} s; most held waiting: {waiting}")
    assert took >= 9.5
    assert waiting <= PREFETCH


async def test_a_fleet_wide_20_per_second_holds_across_two_worker_processes(
    worker_process: Any,
    app_module: Callable[[str], Any],
    amqp: aio_pika.abc.AbstractRobustConnection,
    redis_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    module = app_module("paced")
    env = {"RW_TEST_REDIS_URL": redis_url}
    workers = [
        worker_process("--app", "paced:app", "--prefetch", str(PREFETCH), env=env) for _ in range(2)
    ]
    for w in workers:
        w.wait_consuming()
    async with module.app:
        await asyncio.gather(*(module.app.publish(module.Paced(n=n)) for n in range(COUNT)))
    waiting = await asyncio.wait_for(
        watch_the_queue(amqp, f"{prefix}.paced", lambda: len(read_record(tmp_path))), 40
    )
    record = read_record(tmp_path)
    times = sorted(float(line[2]) for line in record)
    took = times[-1] - times[0]
    print(f"\n200 messages at 20/s fleet-wide, two processes: {took:.2f} s; held: {waiting}")
    assert took >= 9.5
    assert len({line[3] for line in record}) == 2  # both processes took their share
    assert waiting <= 2 * PREFETCH


async def test_concurrency_3_bounds_a_task_without_slowing_another_on_the_same_worker(
    make_app: Callable[..., App],
    start_worker: Callable[..., Awaitable[Worker]],
    prefix: str,
) -> None:
    class Slow(TaskMessage, routing_key=f"{prefix}.slow"):
        n: int

    class Quick(TaskMessage, routing_key=f"{prefix}.quick"):
        n: int

    app = make_app()
    running, most, slow_done, quick_done = [0], [0], [0], [0]
    release = asyncio.Event()

    @app.task(queue=f"{prefix}.slow", concurrency=3)
    async def slow(msg: Slow) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await release.wait()
        finally:
            running[0] -= 1
            slow_done[0] += 1

    @app.task(queue=f"{prefix}.quick")
    async def quick(msg: Quick) -> None:
        quick_done[0] += 1

    # Four shared slots: had the 47 waiting Slow messages taken them, Quick would wait.
    await start_worker(app, concurrency=4)
    await asyncio.gather(*(app.publish(Slow(n=n)) for n in range(50)))
    await eventually(lambda: running[0] == 3)
    await asyncio.gather(*(app.publish(Quick(n=n)) for n in range(50)))
    await eventually(lambda: quick_done[0] == 50, timeout=10)
    assert slow_done[0] == 0 and running[0] == 3
    release.set()
    await eventually(lambda: slow_done[0] == 50, timeout=20)
    assert most[0] == 3
