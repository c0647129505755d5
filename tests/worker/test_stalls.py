"""Stalls and broker trouble a worker reports in its own words: an async handler
blocking the event loop is named in a WARNING, a channel the broker closes is one
WARNING with the queue, the message and the broker's reason, an ordinary reconnect
leaves no ERROR from aio-pika, and a worker stopped while it connects exits."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import eventually, queue_depth, read_record
from support.proxy import Proxy

from rabbitworker import App, Context, TaskMessage
from rabbitworker.topology import suspect_queue_name


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_an_async_handler_blocking_the_loop_for_over_a_second_is_named_in_a_warning(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitworker")
    app = make_app()
    queue = f"{prefix}.jobs"
    done: list[int] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int
        block: float = 0.0

    @app.task(queue=queue)
    async def stubborn(msg: Job) -> None:
        time.sleep(msg.block)  # blocking call in an async handler
        done.append(msg.n)

    await start_worker(app)
    await app.publish(Job(n=1, block=0.3))  # under the 1 s default: no warning
    await eventually(lambda: done == [1])
    message_id = await app.publish(Job(n=2, block=1.6))
    await eventually(lambda: done == [1, 2])
    await eventually(lambda: bool(warnings_of(caplog, "answers again")))

    [warning] = warnings_of(caplog, "the event loop has been blocked")
    assert re.search(r"blocked for 1\.\d s by handler \S*stubborn ", warning), warning
    assert f"(message {message_id} on {queue})" in warning
    assert f"{Path(__file__).name}:" in warning  # the line it is stuck on
    assert "make it a plain def" in warning


async def test_a_channel_closed_by_the_broker_is_one_warning_naming_the_queue_message_and_reason(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    amqp: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitworker")
    app = make_app()
    queue = f"{prefix}.jobs"
    release = asyncio.Event()
    runs: list[str] = []
    done: list[str] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=queue)
    async def slow(msg: Job, ctx: Context) -> None:
        runs.append(ctx.message_id)
        await release.wait()
        done.append(ctx.message_id)

    worker = await start_worker(app)
    message_id = await app.publish(Job(n=1))
    await eventually(lambda: runs == [message_id])

    # Acknowledge a tag the broker never sent on the worker's consuming channel: the
    # broker closes that channel with PRECONDITION_FAILED.
    consumer = next(c for c in worker._consumers if c.queue == queue)
    underlay = await consumer.channel.get_underlay_channel()
    await underlay.basic_ack(999_999)

    await eventually(lambda: bool(warnings_of(caplog, "the broker closed the channel")))
    [warning] = warnings_of(caplog, "the broker closed the channel")
    assert f"consuming {queue}:" in warning
    assert "PRECONDITION_FAILED" in warning and "999999" in warning
    assert f"running: {message_id}" in warning
    # The channel is restored and the message comes back to this worker, which knows
    # why: it runs again as usual, not as a crash suspect.
    await eventually(lambda: len(runs) == 2, timeout=15)
    release.set()
    await eventually(lambda: done == [message_id])
    assert worker.stats().suspects_moved == 0
    assert await queue_depth(amqp, suspect_queue_name(queue)) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_ordinary_reconnect_logs_one_warning_and_no_error_from_aio_pika(
    app_module: Any,
    worker_process: Any,
    proxy: Proxy,
    broker_url: str,
    tmp_path: Path,
) -> None:
    m = app_module("drain")
    async with m.app:
        for n in range(300):
            await m.app.publish(m.Work(n=n))
    worker = worker_process(
        "--app", "drain:app", "--concurrency", "10", "--prefetch", "20",
        env={"RABBITWORKER_URL": proxy.url(broker_url)},
    )  # fmt: skip

    def handled() -> int:
        return len({line[1] for line in read_record(tmp_path) if line[0] == "work"})

    await eventually(lambda: handled() >= 50, timeout=30)
    proxy.cut(down="refuse")
    await asyncio.sleep(2.5)  # a few failed reconnect attempts
    await proxy.restore()
    await eventually(lambda: "reconnected to" in worker.output, timeout=20)
    await eventually(lambda: handled() == 300, timeout=60)
    assert worker.stop() == 0

    output = worker.output
    assert " ERROR aio_pika" not in output, output
    assert " ERROR aiormq" not in output, output
    lost = [line for line in output.splitlines() if " lost (" in line]
    assert len(lost) == 1, output
    assert "WARNING rabbitworker.connection: connection to" in lost[0]
    assert "guest:guest" not in output


async def test_a_worker_stopped_while_its_connection_stalls_exits_at_once(
    worker_process: Any, app_module: Any
) -> None:
    app_module("drain")
    connections: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # a broker that accepts and then hangs

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        worker = worker_process(
            "--app", "drain:app", env={"RABBITWORKER_URL": f"amqp://guest:guest@127.0.0.1:{port}/"}
        )
        await eventually(lambda: bool(connections), timeout=20)
        worker.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.proc.wait, 10)
    finally:
        for writer in connections:
            writer.transport.abort()
        server.close()
    assert code == 0, worker.output
    assert "Task was destroyed but it is pending" not in worker.output
