"""Bulk publishing against a real broker: per-message outcomes in input order, an
unroutable message reported on its own, nothing reported as published that the
broker did not confirm across a connection cut, and bounded memory for a long
iterator; the same API on the blocking facade, a handler's context and the module."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Iterator
from typing import Any

import aio_pika
import pytest
from support import eventually, queue_depth
from support.proxy import Proxy

import rabbitworker
from rabbitworker import App, Context, PublishResult, TaskMessage, UnroutableError
from rabbitworker.errors import ConfigurationError

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE / 2**20


def job_app(make_app: Callable[..., App], prefix: str, **options: Any) -> tuple[App, type, str]:
    """An app with one queue bound to `<prefix>.job` (classic: the tests are about the
    producer, and a classic queue takes messages faster) and the Job type."""
    options.setdefault("queue_type", "classic")
    app = make_app(**options)
    queue = f"{prefix}.jobs"

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=queue)
    async def work(msg: Job) -> None:
        pass

    return app, Job, queue


async def test_one_unbound_routing_key_in_10000_is_the_one_unroutable(
    make_app: Callable[..., App], prefix: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    app, Job, queue = job_app(make_app, prefix)

    class Stray(TaskMessage, routing_key=f"{prefix}.nowhere"):
        n: int

    stray_at = 6_543
    messages = (Stray(n=i) if i == stray_at else Job(n=i) for i in range(10_000))
    async with app:
        results = [r async for r in app.publish_many(messages)]
    assert [r.index for r in results] == list(range(10_000))
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1
    assert failed[0].index == stray_at
    assert isinstance(failed[0].error, UnroutableError)
    assert isinstance(failed[0].message, Stray)
    assert len({r.message_id for r in results}) == 10_000
    await eventually(lambda: _depth_is(amqp, queue, 9_999), timeout=15)


async def _depth_is(amqp: aio_pika.abc.AbstractConnection, queue: str, n: int) -> bool:
    return await queue_depth(amqp, queue) == n


async def test_a_cut_mid_batch_reports_nothing_published_that_was_not_confirmed(
    proxy: Proxy,
    make_app: Callable[..., App],
    prefix: str,
    broker_url: str,
    amqp: aio_pika.abc.AbstractConnection,
) -> None:
    app, Job, queue = job_app(make_app, prefix, publish_timeout=10)
    app.configure(url=proxy.url(broker_url))
    total, cut_at = 6_000, 1_500
    results: list[PublishResult] = []
    async with app:
        async for result in app.publish_many((Job(n=i) for i in range(total)), window=512):
            results.append(result)
            if result.index == cut_at:
                # 512 messages are in flight: their confirms are lost with the link.
                assert proxy.cut() == 1
    assert [r.index for r in results] == list(range(total))
    confirmed = {r.message_id for r in results if r.ok}
    errors = [r.error for r in results if not r.ok]
    print(f"\ncut at #{cut_at}: {len(confirmed)} confirmed, {len(errors)} failed of {total}")
    assert len(confirmed) > cut_at  # the publishing went on after the reconnect
    in_queue = await _message_ids(amqp, queue)
    # A resent message can be there twice (at least once), a confirmed one never zero.
    assert len(in_queue) >= len(confirmed)
    assert confirmed <= set(in_queue)


async def _message_ids(amqp: aio_pika.abc.AbstractConnection, queue: str) -> list[str]:
    channel = await amqp.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count or 0
        ids: list[str] = []
        if count:
            async with declared.iterator(no_ack=True) as stream:
                async for message in stream:
                    ids.append(message.message_id or "")
                    if len(ids) == count:
                        break
        return ids
    finally:
        await channel.close()


async def test_an_iterator_of_200000_messages_runs_in_bounded_memory(
    make_app: Callable[..., App], prefix: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    # The slowest test here (about 30 s on 2 free cores, more when shared): 200,000
    # confirmed publishes cost what they cost on the client. The broker's share is
    # kept small: a transient queue that keeps only the newest 1,000.
    app = make_app(queue_type="classic")

    class Sink(TaskMessage, routing_key=f"{prefix}.sink"):
        n: int

    total, warm = 200_000, 20_000
    ok = 0
    async with app:
        channel = await amqp.channel()
        sink = await channel.declare_queue(
            f"{prefix}.sink", durable=False, arguments={"x-max-length": 1_000}
        )
        await sink.bind(app.exchange, Sink.routing_key)
        try:
            start = 0.0
            async for result in app.publish_many(Sink(n=i) for i in range(total)):
                ok += result.ok
                if result.index == warm:
                    gc.collect()
                    start = rss_mib()
            gc.collect()
            growth = rss_mib() - start
        finally:
            await sink.delete(if_unused=False, if_empty=False)
            await channel.close()
    print(f"\n{total:,} messages: RSS grew {growth:.1f} MiB after the first {warm:,}")
    assert ok == total
    # The window holds 512 messages; 180,000 more, kept, would take well over 100 MiB.
    assert growth < 16


async def test_the_blocking_facade_reads_the_iterator_a_few_windows_at_a_time(
    make_app: Callable[..., App], prefix: str, amqp: aio_pika.abc.AbstractConnection
) -> None:
    app, Job, queue = job_app(make_app, prefix)
    async with app:
        pass  # declares the queue
    taken: list[int] = []

    def messages() -> Iterator[Any]:
        for i in range(100):
            taken.append(i)
            yield Job(n=i)

    def run() -> list[tuple[int, bool, int]]:
        out = []
        for r in app.sync.publish_many(messages(), window=3):
            out.append((r.index, r.ok, len(taken)))
        app.sync.close()
        return out

    out = await asyncio.to_thread(run)
    assert [(i, ok) for i, ok, _ in out] == [(i, True) for i in range(100)]
    # Read 24 at a time (8 windows): never the whole input up front.
    assert out[0][2] == 24
    await eventually(lambda: _depth_is(amqp, queue, 100), timeout=15)


async def test_a_handler_and_the_module_level_function_publish_many(
    make_app: Callable[..., App], prefix: str, start_worker: Any
) -> None:
    app = make_app(queue_type="classic")
    done: asyncio.Queue[int] = asyncio.Queue()

    class Fan(TaskMessage, routing_key=f"{prefix}.fan"):
        count: int

    class Leaf(TaskMessage, routing_key=f"{prefix}.leaf"):
        n: int

    @app.task(queue=f"{prefix}.fans")
    async def fan(msg: Fan, ctx: Context) -> None:
        results = [r async for r in ctx.publish_many(Leaf(n=i) for i in range(msg.count))]
        assert all(r.ok for r in results)

    @app.task(queue=f"{prefix}.leaves")
    async def leaf(msg: Leaf) -> None:
        done.put_nowait(msg.n)

    await start_worker(app)
    producer = make_app("producer")
    producer.register(Fan)
    async with producer:
        results = [r async for r in rabbitworker.publish_many([Fan(count=30)])]
    assert results[0].ok and results[0].message_id
    seen = {await asyncio.wait_for(done.get(), 15) for _ in range(30)}
    assert seen == set(range(30))


async def test_a_bad_window_or_a_given_id_is_refused(
    make_app: Callable[..., App], prefix: str
) -> None:
    app, Job, _ = job_app(make_app, prefix)
    async with app:
        with pytest.raises(ConfigurationError, match="window"):
            await anext(app.publish_many([Job(n=1)], window=0))
        with pytest.raises(ConfigurationError, match="track"):
            app.publish_many([Job(n=1)], track=True)
