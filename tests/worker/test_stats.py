"""`Worker.stats()`: one snapshot of what a worker is and does (its host and pid, its
queues and limits, when it started, the handlers running and for how long, what
waits, what it handled by outcome), and what ops reads from it (readiness)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from support import eventually

from rabbitworker import App, Reject, TaskMessage, Worker
from rabbitworker.ops.health import WorkerHealth


async def test_stats_show_the_worker_its_running_handlers_and_what_it_handled(
    make_app: Callable[..., App],
    start_worker: Callable[..., Awaitable[Worker]],
    prefix: str,
) -> None:
    app = make_app()
    queue = f"{prefix}.jobs"
    release = asyncio.Event()

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        kind: str

    @app.task(queue=queue)
    async def job(msg: Job) -> None:
        if msg.kind == "bad":
            raise Reject("no")
        if msg.kind == "slow":
            await release.wait()

    before = datetime.now(UTC)
    worker = await start_worker(app, concurrency=2, prefetch=10)
    stats = worker.stats()
    assert (stats.host, stats.pid) == (socket.gethostname(), os.getpid())
    assert stats.queues == (queue,) and (stats.concurrency, stats.prefetch) == (2, 10)
    assert stats.started_at is not None and stats.started_at >= before
    assert stats.ready and stats.connected and stats.consuming and not stats.draining
    assert stats.outcomes == {} and stats.in_flight == () and stats.waiting == {queue: 0}

    async with app:
        await app.publish(Job(kind="ok"))
        await app.publish(Job(kind="bad"))
        await eventually(lambda: worker.stats().handled == 2)
        slow = [await app.publish(Job(kind="slow")) for _ in range(3)]
        # Two run (the concurrency), one waits for a slot.
        await eventually(lambda: len(worker.stats().in_flight) == 2)
        await eventually(lambda: worker.stats().waiting == {queue: 1})
        # Their running time grows from one snapshot to the next.
        await eventually(lambda: min(f.seconds for f in worker.stats().in_flight) >= 0.05)
        stats = worker.stats()
        assert {f.message_id for f in stats.in_flight} <= set(slow)
        assert all(f.queue == queue and f.type == f"{prefix}.job" for f in stats.in_flight)
        assert stats.running(queue) == 2
        assert stats.outcomes == {"ack": 1, "dead_letter": 1} and stats.handled == 2
        release.set()
        await eventually(lambda: worker.stats().handled == 5)
    stats = worker.stats()
    assert stats.outcomes == {"ack": 4, "dead_letter": 1}
    assert stats.in_flight == () and stats.waiting == {queue: 0}

    health = WorkerHealth(worker, asyncio.get_running_loop())
    assert health.ready and health.state() == {
        "connected": True,
        "consuming": True,
        "draining": False,
    }
    worker.stop()
    assert worker.stats().draining and not worker.stats().ready and not health.ready


def test_a_worker_not_started_yet_reports_itself_idle_and_not_ready() -> None:
    app = App("idle")

    class Job(TaskMessage, routing_key="idle.job"):
        pass

    @app.task(queue="idle")
    async def job(msg: Job) -> None:
        pass

    stats = Worker(app).stats()
    assert stats.started_at is None and not stats.connected and not stats.consuming
    assert stats.handled == 0 and stats.in_flight == () and stats.waiting == {"idle": 0}
    assert not stats.ready
