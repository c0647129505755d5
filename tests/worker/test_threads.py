"""Sync handlers past their timeout: their threads are abandoned, counted and
bounded, and never take a slot from the next message; at the bound the worker
stops with exit code 3 so that its process can be restarted."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import eventually, get_all, queue_depth, read_record

from rabbitworker import App, RetryPolicy, TaskMessage
from rabbitworker.topology import dead_letter_queue_name

CONCURRENCY = 2


async def test_after_three_times_concurrency_hung_sync_handlers_a_trivial_one_still_succeeds(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    amqp: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rabbitworker")
    app = make_app()
    queue = f"{prefix}.jobs"
    release = threading.Event()
    hung = 3 * CONCURRENCY
    trivial: list[int] = []

    class Hang(TaskMessage, routing_key=f"{prefix}.hang"):
        n: int

    class Trivial(TaskMessage, routing_key=f"{prefix}.trivial"):
        n: int

    @app.task(queue=queue, timeout=1, retry=RetryPolicy(max_attempts=1))
    def hang(msg: Hang) -> None:
        release.wait(60)

    @app.task(queue=queue, timeout=1)
    def trivial_handler(msg: Trivial) -> None:
        trivial.append(msg.n)

    worker = await start_worker(app, concurrency=CONCURRENCY)
    try:
        for n in range(hung):
            await app.publish(Hang(n=n))
        await eventually(lambda: worker.stats().abandoned_threads == hung, timeout=30)
        await app.publish(Trivial(n=1))
        await eventually(lambda: trivial == [1], timeout=5)

        dlq = dead_letter_queue_name(queue)

        async def all_dead_lettered() -> bool:
            return await queue_depth(amqp, dlq) == hung

        await eventually(all_dead_lettered)
        letters = await get_all(amqp, dlq)
        assert {(m.headers or {})["x-error-type"] for m in letters} == {"HandlerTimeout"}
        assert worker.stats().abandoned_threads_total == hung
        warnings = [r.getMessage() for r in caplog.records if "is abandoned" in r.getMessage()]
        assert len(warnings) == hung
        assert f"({hung} abandoned now, at most 100)" in warnings[-1]
        assert ".hang on message" in warnings[-1]
    finally:
        release.set()
    # Abandoned threads that end are no longer counted as running; the total stays.
    await eventually(lambda: worker.stats().abandoned_threads == 0, timeout=10)
    assert worker.stats().abandoned_threads_total == hung
    assert not worker.exhausted


async def test_a_worker_whose_abandoned_threads_reach_the_bound_exits_with_code_3(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("hung")
    async with m.app:
        for n in range(3):
            await m.app.publish(m.Hang(n=n))
    worker = worker_process(
        "--app", "hung:app", "--concurrency", "1",
        env={"RABBITWORKER_MAX_ABANDONED_THREADS": "2"},
    )  # fmt: skip
    code = await asyncio.to_thread(worker.proc.wait, 30)

    assert code == 3, worker.output
    assert worker.output.count("2 sync handler threads are stuck past their timeout") == 1
    assert "(2 abandoned now, at most 2)" in worker.output
    assert len([line for line in read_record(tmp_path) if line[0] == "start"]) in (2, 3)
    # Its messages are settled (dead-lettered) or back in the queue: none is lost.
    dead = await queue_depth(amqp, dead_letter_queue_name(m.name("q")))
    assert dead + await queue_depth(amqp, m.name("q")) == 3
    assert worker.proc.returncode != -signal.SIGKILL
