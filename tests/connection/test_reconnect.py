"""Connection loss, injected with the loopback proxy: workers reconnect and restore
their consumers, publishers retry across a reconnect or fail clearly, pending RPC
calls fail instead of hanging, and startup gives up after the connect timeout."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel
from support import APPS, ROOT, WorkerProcess, eventually, get_all
from support.proxy import Proxy

from rabbitworker import App, Context, TaskMessage
from rabbitworker._amqp.connection import connect, retry_across_reconnects
from rabbitworker.errors import ConnectionFailed, NotConfirmed
from rabbitworker.urls import parse_broker_url


def through(app: App, proxy: Proxy, broker_url: str, **settings: Any) -> App:
    """Point `app` at the broker through `proxy`."""
    app.configure(url=proxy.url(broker_url), **settings)
    return app


async def consumers_on(amqp: aio_pika.abc.AbstractConnection, queue: str) -> int:
    channel = await amqp.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0
    finally:
        if not channel.is_closed:
            await channel.close()


async def test_a_worker_cut_off_mid_stream_reconnects_and_handles_every_message(
    proxy: Proxy,
    make_app: Callable[..., App],
    start_worker: Any,
    broker_url: str,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitworker")
    app = through(make_app("worker"), proxy, broker_url)
    producer = make_app("producer")
    handled: Counter[str] = Counter()

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=f"{prefix}.jobs")
    async def work(msg: Job, ctx: Context) -> None:
        await asyncio.sleep(0.01)  # some work, so deliveries are in flight at the cut
        handled[ctx.message_id] += 1

    producer.register(Job)
    async with app:
        pass  # declares the worker's queue, so the producer can fill it first
    async with producer:
        published = {await producer.publish(Job(n=i)) for i in range(600)}
    # Everything is queued before the worker starts, so the cut lands mid-stream.
    worker = await start_worker(app, prefetch=20, concurrency=10)
    connections = proxy.accepted
    await eventually(lambda: len(handled) >= 150, timeout=30)
    assert len(handled) < len(published)
    assert proxy.cut() == 1
    await eventually(lambda: set(handled) >= published, timeout=60)

    assert set(handled) == published
    assert proxy.accepted == connections + 1  # the worker's one reconnect
    await eventually(lambda: worker.stats().handled >= len(published))  # counted once settled
    await eventually(lambda: "reconnected to" in caplog.text)
    assert "guest:guest" not in caplog.text


async def test_a_worker_redeclares_topology_deleted_while_it_was_disconnected(
    proxy: Proxy,
    make_app: Callable[..., App],
    start_worker: Any,
    broker_url: str,
    prefix: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    app = through(make_app("worker"), proxy, broker_url)
    queue = f"{prefix}.jobs"
    handled: list[int] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=queue)
    async def work(msg: Job) -> None:
        handled.append(msg.n)

    await start_worker(app)
    proxy.cut(down="refuse")
    channel = await amqp.channel()
    await channel.queue_delete(queue)
    await channel.exchange_delete(app.exchange)
    await channel.close()
    await proxy.restore()

    async def consuming_again() -> bool:
        return await consumers_on(amqp, queue) == 1

    await eventually(consuming_again, timeout=30)
    channel = await amqp.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(app.exchange)  # passive: it must be back
    await exchange.publish(aio_pika.Message(b'{"n": 7}', type=Job.routing_key), Job.routing_key)
    await channel.close()
    await eventually(lambda: handled == [7], timeout=10)


async def test_publishes_interrupted_by_a_cut_are_all_confirmed_after_the_reconnect(
    proxy: Proxy,
    make_app: Callable[..., App],
    broker_url: str,
    prefix: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = through(make_app(), proxy, broker_url, publish_timeout=20)

    class Note(TaskMessage, routing_key=f"{prefix}.note"):
        n: int

    @app.task(queue=f"{prefix}.notes")
    async def noop(msg: Note) -> None: ...

    async with app:
        sends = [asyncio.ensure_future(app.publish(Note(n=i))) for i in range(300)]
        await asyncio.sleep(0)  # one turn: every publish is written, none confirmed yet
        unconfirmed = sum(not send.done() for send in sends)
        proxy.cut()
        ids = await asyncio.gather(*sends)

    in_queue = {m.message_id for m in await get_all(amqp, f"{prefix}.notes")}
    assert unconfirmed > 0
    # The outage is reported once, not once per waiting publish.
    lost = [r for r in caplog.records if "lost" in r.getMessage() and r.levelname == "WARNING"]
    assert len(lost) == 1, [r.getMessage() for r in lost]
    assert proxy.accepted == 2
    # Every publish that returned is in the queue; some may be there twice.
    assert in_queue == set(ids)
    assert len(set(ids)) == 300


@pytest.mark.parametrize("down", ["refuse", "stall"])
async def test_publishing_to_a_stopped_broker_raises_within_the_publish_timeout(
    proxy: Proxy,
    make_app: Callable[..., App],
    broker_url: str,
    prefix: str,
    amqp: aio_pika.abc.AbstractRobustConnection,
    down: Any,
) -> None:
    app = through(make_app(), proxy, broker_url, publish_timeout=1.5)

    class Note(TaskMessage, routing_key=f"{prefix}.note"):
        n: int

    @app.task(queue=f"{prefix}.notes")
    async def noop(msg: Note) -> None: ...

    async with app:
        proxy.cut(down=down)
        # The bound only catches a hang; the publish itself gives up after 1.5 s.
        async with asyncio.timeout(30):
            with pytest.raises((ConnectionFailed, NotConfirmed)) as raised:
                await app.publish(Note(n=1))
        assert "not confirmed" in str(raised.value) or "did not confirm" in str(raised.value)
        assert "guest:guest" not in str(raised.value)
        await proxy.restore()
        # The same app publishes again once the broker is back.
        message_id = await app.publish(Note(n=2))

    assert [m.message_id for m in await get_all(amqp, f"{prefix}.notes")] == [message_id]


async def test_a_setup_step_cut_off_by_a_connection_loss_runs_again_after_the_reconnect(
    proxy: Proxy, broker_url: str
) -> None:
    connection = await connect(
        parse_broker_url(proxy.url(broker_url)), timeout=10, heartbeat=60, name="test"
    )
    attempts = 0

    async def open_channel() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            proxy.cut()
        channel = await connection.channel()
        await channel.close()
        return True

    try:
        assert await retry_across_reconnects(connection, "open", open_channel, timeout=30)
    finally:
        await connection.close()
    assert attempts == 2
    assert proxy.accepted == 2


async def test_a_setup_step_gives_up_with_connection_failed_when_the_broker_stays_away(
    proxy: Proxy, broker_url: str
) -> None:
    connection = await connect(
        parse_broker_url(proxy.url(broker_url)), timeout=10, heartbeat=60, name="test"
    )

    async def open_channel() -> None:
        proxy.cut(down="refuse")
        await connection.channel()

    try:
        with pytest.raises(ConnectionFailed, match="open: the connection was lost"):
            await retry_across_reconnects(connection, "open", open_channel, timeout=1)
    finally:
        await proxy.restore()
        await connection.close()


class Answer(BaseModel):
    n: int


async def test_an_rpc_call_pending_during_a_cut_fails_with_connection_failed(
    proxy: Proxy,
    make_app: Callable[..., App],
    start_worker: Any,
    broker_url: str,
    prefix: str,
) -> None:
    server = make_app("server")
    caller = through(make_app("caller"), proxy, broker_url)
    started, release = asyncio.Event(), asyncio.Event()

    class Ask(TaskMessage[Answer], routing_key=f"{prefix}.ask"):
        n: int

    @server.task(queue=f"{prefix}.asks")
    async def answer(msg: Ask) -> Answer:
        started.set()
        await release.wait()
        return Answer(n=msg.n)

    caller.register(Ask)
    await start_worker(server)
    async with caller:
        pending = await caller.submit(Ask(n=1))
        await asyncio.wait_for(started.wait(), 10)
        proxy.cut()
        with pytest.raises(ConnectionFailed):
            await pending.result(timeout=30)
        release.set()
        # After the reconnect the reply consumer is back and calls work again.
        channel = caller.transport.publisher.channel  # type: ignore[attr-defined]
        await eventually(lambda: not channel.is_closed, timeout=30)
        assert await caller.call(Ask(n=2), timeout=30) == Answer(n=2)


@pytest.mark.parametrize("down", ["refuse", "stall"])
async def test_the_cli_gives_up_after_the_connect_timeout_with_one_line_and_exit_2(
    proxy: Proxy, broker_url: str, prefix: str, tmp_path: Path, down: Any
) -> None:
    proxy.cut(down=down)
    url = proxy.url(broker_url)
    env = {
        **os.environ,
        "RABBITWORKER_URL": url,
        "RW_TEST_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
    }
    args = ["run", "--app", "two_queues:app", "--connect-timeout", "2"]
    worker = WorkerProcess(args, env, tmp_path / "worker.log")
    try:
        await eventually(lambda: worker.proc.poll() is not None, timeout=60)
    finally:
        worker.stop()
    errors = [line for line in worker.output.splitlines() if line.startswith("error:")]
    assert worker.proc.returncode == 2
    masked = url.replace("guest:guest@", "guest:***@")
    assert len(errors) == 1
    assert errors[0].startswith(f"error: cannot connect to {masked} within 2 s: ")
    assert "guest:guest" not in worker.output


def test_a_short_chaos_soak_with_kills_and_cuts_loses_no_message(broker_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            *("--messages", "2000", "--kills", "2", "--cuts", "2"),
            *("--gap", "0.3", "--max-down", "1", "--stall", "60", "--timeout", "240"),
            *("--url", broker_url),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lost: 0\n" in result.stdout
    assert "total: " in result.stdout and "of 2000 ids (published 2000)" in result.stdout
    assert "kills: 2  cuts: 2 " in result.stdout
