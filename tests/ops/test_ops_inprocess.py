"""Operations in the test process (a real broker, the worker on this loop): the
endpoints of `run_worker`, the metrics of publishes, calls and outcomes, the
per-message log records, and the supervisor's endpoints over its ops directory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel
from support import eventually
from test_ops import Metrics, free_port, get, histogram_count, messages, ready, scrape

from rabbitworker import App, Context, Reject, Retry, RetryPolicy, TaskMessage
from rabbitworker.ops.runtime import OpsOptions, add_middleware, run_worker
from rabbitworker.ops.supervised import SupervisorOps
from rabbitworker.worker import Worker


def sample(m: Metrics, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


class Answer(BaseModel):
    n: int


async def test_a_worker_on_this_loop_serves_metrics_probes_and_logs_each_message(
    make_app: Callable[..., App], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    class Job(TaskMessage[Answer], routing_key=f"{prefix}.job"):
        n: int
        kind: str = "ok"

    queue = f"{prefix}.jobs"

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> Answer:
        if msg.kind == "retry-once" and ctx.attempt == 1:
            raise Retry()
        if msg.kind == "reject":
            raise Reject("no")
        return Answer(n=msg.n)

    metrics_port, health_port = free_port(), free_port()
    options = OpsOptions(metrics_port=metrics_port, health_port=health_port)
    add_middleware(app, options)
    caplog.set_level(logging.DEBUG, logger="rabbitworker.messages")
    worker = Worker(app, grace=5)
    running = asyncio.create_task(run_worker(worker, options, None, handle_signals=False))
    try:
        await eventually(lambda: ready(health_port), timeout=15)
        assert (await get(health_port, "/healthz")).json() == {"loop": True}
        for kind in ("ok", "retry-once", "reject"):
            await app.publish(Job(n=1, kind=kind))
        assert await app.call(Job(n=7), timeout=10) == Answer(n=7)

        async def counted() -> bool:
            m = await scrape(metrics_port)
            return messages(m, queue, "ok") == 3 and messages(m, queue, "dead_lettered") == 1

        await eventually(counted, timeout=10)
        m = await scrape(metrics_port)
        assert messages(m, queue, "retried") == 1
        assert histogram_count(m, queue) == 5
        publishes = "rabbitworker_publishes_total"
        assert sample(m, publishes, outcome="confirmed", routing_key=f"{prefix}.job") == 4
        assert sample(m, publishes, outcome="confirmed", routing_key="(reply)") >= 1
        calls = "rabbitworker_rpc_call_seconds_count"
        assert sample(m, calls, outcome="ok", routing_key=f"{prefix}.job") == 1
        assert (await get(metrics_port, "/nowhere")).status_code == 404
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    with pytest.raises(httpx.HTTPError):
        await get(health_port, "/healthz")  # the server is gone with the worker
    handled = [r for r in caplog.records if r.name == "rabbitworker.messages"]
    assert sorted(r.__dict__["outcome"] for r in handled) == [
        "dead_lettered", "ok", "ok", "ok", "retried",
    ]  # fmt: skip
    assert all(r.__dict__["queue"] == queue and "body" not in r.__dict__ for r in handled)


async def test_the_supervisor_answers_for_its_workers_from_the_ops_directory() -> None:
    port = free_port()
    ops = SupervisorOps(OpsOptions(metrics_port=port, health_port=port))
    env = ops.env()
    assert env["RABBITWORKER_OPS_DIR"] == ops.dir
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(ops.dir)
    children = [(0, 101, True), (1, 102, True)]
    stopping = False
    ops.start(lambda: children, lambda: stopping)
    try:
        for slot in (0, 1):
            Path(ops.dir, f"ready-{slot}").write_bytes(b"1")
        assert await ready(port)
        Path(ops.dir, "ready-1").write_bytes(b"0")  # a worker lost its connection
        body = (await get(port, "/readyz")).json()
        assert body == {"draining": False, "workers": {"0": True, "1": False}}
        Path(ops.dir, "ready-1").write_bytes(b"1")
        children[1] = (1, 103, False)  # restarting
        assert not await ready(port)
        children[1] = (1, 103, True)
        assert await ready(port)
        stopping = True
        assert not await ready(port)
        assert (await get(port, "/healthz")).status_code == 200
        assert (await get(port, "/metrics")).status_code == 200
        ops.child_exited(101)
    finally:
        ops.close()
    assert not Path(ops.dir).exists()
