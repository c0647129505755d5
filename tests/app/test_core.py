"""The core against a real broker: confirmed publishing, prefetch, sync handlers,
registration errors."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel
from support import eventually, get_all, queue_depth

import rabbitworker
from rabbitworker import App, Context, TaskMessage
from rabbitworker.errors import ConfigurationError, UnroutableError


def test_the_package_exports_a_short_sorted_list_of_public_names() -> None:
    names = rabbitworker.__all__
    assert names == sorted(names)
    for name in ("App", "TaskMessage", "Context", "RetryPolicy", "Retry", "Reject"):
        assert name in names
    for name in ("publish", "call", "submit"):
        assert callable(getattr(rabbitworker, name))
    for name in names:
        assert hasattr(rabbitworker, name)


def test_every_error_derives_from_one_root() -> None:
    from rabbitworker import errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.RabbitWorkerError), name


def test_two_message_types_with_one_routing_key_in_one_app_are_a_configuration_error(
    prefix: str,
) -> None:
    app = App("dup")

    class First(TaskMessage, routing_key=f"{prefix}.same"):
        a: int

    class Second(TaskMessage, routing_key=f"{prefix}.same"):
        b: int

    @app.task(queue=f"{prefix}.q1")
    async def one(msg: First) -> None: ...

    with pytest.raises(ConfigurationError, match="used by both"):

        @app.task(queue=f"{prefix}.q2")
        async def two(msg: Second) -> None: ...


def test_a_handler_without_a_message_annotation_is_a_configuration_error() -> None:
    app = App("bad")
    with pytest.raises(ConfigurationError, match="TaskMessage subclass"):

        @app.task(queue="q")
        async def handler(msg: int) -> None: ...


def test_a_routing_key_with_wildcards_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="routing_key"):

        class Bad(TaskMessage, routing_key="a.*"):
            pass


def test_the_reply_type_is_read_from_the_generic_parameter() -> None:
    class Reply(BaseModel):
        x: int

    class Asks(TaskMessage[Reply], routing_key="asks.reply"):
        pass

    class Tells(TaskMessage, routing_key="tells.nothing"):
        pass

    assert Asks.reply_type() is Reply
    assert Tells.reply_type() is Any


async def test_module_level_publish_outside_a_connected_app_raises_a_clear_error() -> None:
    class Lonely(TaskMessage, routing_key="lonely.one"):
        pass

    with pytest.raises(ConfigurationError, match="async with app"):
        await rabbitworker.publish(Lonely())


async def test_publish_returns_after_the_broker_has_the_message_in_wire_format(
    make_app: Any, amqp: Any, prefix: str
) -> None:
    app: App = make_app()

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        n: int

    @app.task(queue=f"{prefix}.pings")
    async def ping(msg: Ping) -> None: ...

    async with app:
        message_id = await rabbitworker.publish(Ping(n=3), headers={"tenant": "acme"})
    [message] = await get_all(amqp, f"{prefix}.pings")
    assert message.body == b'{"n":3}'
    assert message.message_id == message_id
    assert message.content_type == "application/json"
    assert message.type == f"{prefix}.ping"
    assert message.delivery_mode == 2
    assert message.timestamp is not None
    headers = dict(message.headers)
    headers.pop("x-delivery-count", None)  # added by quorum queues on delivery
    assert headers == {"x-attempt": 1, "tenant": "acme"}


async def test_publishing_a_message_no_queue_is_bound_for_raises_unroutable(
    make_app: Any, prefix: str
) -> None:
    app: App = make_app()

    class Nobody(TaskMessage, routing_key=f"{prefix}.nobody.listens"):
        pass

    async with app:
        with pytest.raises(UnroutableError, match=r"nobody\.listens"):
            await app.publish(Nobody())


async def test_at_most_prefetch_messages_are_delivered_while_handlers_block(
    make_app: Any, start_worker: Any, amqp: Any, prefix: str
) -> None:
    app: App = make_app()
    queue = f"{prefix}.slow"
    release = asyncio.Event()
    running: list[int] = []
    peak = 0

    class Slow(TaskMessage, routing_key=f"{prefix}.slow"):
        n: int

    @app.task(queue=queue)
    async def slow(msg: Slow) -> None:
        nonlocal peak
        running.append(msg.n)
        peak = max(peak, len(running))
        await release.wait()
        running.remove(msg.n)

    async with app:
        for n in range(20):
            await app.publish(Slow(n=n))
    await start_worker(app, prefetch=5, concurrency=50)
    await eventually(lambda: len(running) == 5)

    async def fifteen_still_ready() -> bool:
        return await queue_depth(amqp, queue) == 15

    await eventually(fifteen_still_ready)
    assert len(running) == 5
    release.set()
    await eventually(lambda: not running and peak == 5)

    async def drained() -> bool:
        return await queue_depth(amqp, queue) == 0

    await eventually(drained)
    assert peak == 5


async def test_a_sync_handler_runs_off_the_event_loop(
    make_app: Any, start_worker: Any, prefix: str
) -> None:
    app: App = make_app()
    sleeping = threading.Event()
    wake = threading.Event()
    fast_done: list[int] = []
    loop_threads: set[int] = set()
    sync_threads: set[int] = set()

    class Sleepy(TaskMessage, routing_key=f"{prefix}.sleepy"):
        pass

    class Quick(TaskMessage, routing_key=f"{prefix}.quick"):
        n: int

    @app.task(queue=f"{prefix}.mixed")
    def sleepy(msg: Sleepy) -> None:
        sync_threads.add(threading.get_ident())
        sleeping.set()
        # Blocks this thread until the test has seen the quick messages go through.
        while not wake.is_set():
            time.sleep(0.01)

    @app.task(queue=f"{prefix}.mixed")
    async def quick(msg: Quick, ctx: Context) -> None:
        loop_threads.add(threading.get_ident())
        fast_done.append(msg.n)

    worker = await start_worker(app)  # connects the app; producing through it is fine
    await app.publish(Sleepy())
    await eventually(sleeping.is_set)
    for n in range(10):
        await app.publish(Quick(n=n))
    await eventually(lambda: len(fast_done) == 10)
    assert not wake.is_set()  # the sync handler was still blocked meanwhile
    wake.set()
    await eventually(lambda: worker.stats().handled == 11)
    assert sorted(fast_done) == list(range(10))
    assert loop_threads.isdisjoint(sync_threads)


async def test_classic_queues_are_an_option_and_work_end_to_end(
    make_app: Any, start_worker: Any, amqp: Any, prefix: str
) -> None:
    app: App = make_app(queue_type="classic")
    seen: list[int] = []

    class Plain(TaskMessage, routing_key=f"{prefix}.plain"):
        n: int

    @app.task(queue=f"{prefix}.classic")
    async def plain(msg: Plain) -> None:
        seen.append(msg.n)

    await start_worker(app)
    for n in range(3):
        await app.publish(Plain(n=n))
    await eventually(lambda: sorted(seen) == [0, 1, 2])
    channel = await amqp.channel()
    spec = next(s for s in app.topology().queues if s.name == f"{prefix}.classic")
    assert spec.arguments["x-queue-type"] == "classic"
    assert "x-delivery-limit" not in spec.arguments
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(
            spec.name, durable=True, arguments={**spec.arguments, "x-queue-type": "quorum"}
        )
