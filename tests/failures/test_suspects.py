"""The suspect path is for crashes only: a worker that lost its own connection does
not take the redelivery of what it held (or had just acknowledged) for a crash; and
the gate a suspect runs alone behind."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support import eventually, queue_depth
from support.proxy import Proxy

from rabbitworker import App, Context, TaskMessage
from rabbitworker._amqp.transport import AmqpTransport
from rabbitworker.settings import Settings
from rabbitworker.topology import suspect_queue_name
from rabbitworker.transport import Consumer, Delivery, OnDelivery
from rabbitworker.worker.suspects import Gate

MOVED = re.compile(r"message (\S+) on \S+ was delivered again after a worker lost it")


def recording_receipts(app: App, receipts: list[tuple[str, bool]]) -> None:
    """Make `app` note every delivery its consumers receive: (message id, redelivered)."""

    class Recording(AmqpTransport):
        async def consume(self, queue: str, on_delivery: OnDelivery, **options: Any) -> Consumer:
            def noted(delivery: Delivery) -> Any:
                receipts.append((delivery.message_id, delivery.redelivered))
                return on_delivery(delivery)

            return await super().consume(queue, noted, **options)

    def factory(app: App, s: Settings) -> AmqpTransport:
        return Recording(
            s.url,
            connect_timeout=s.connect_timeout,
            publish_timeout=s.publish_timeout,
            heartbeat=s.heartbeat,
            name=app.name,
        )

    app.transport_factory = factory


async def test_a_worker_cut_off_mid_stream_takes_none_of_what_it_held_for_a_suspect(
    proxy: Proxy,
    make_app: Callable[..., App],
    start_worker: Any,
    broker_url: str,
    prefix: str,
    amqp: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rabbitworker")
    app = make_app("worker")
    app.configure(url=proxy.url(broker_url))
    receipts: list[tuple[str, bool]] = []
    recording_receipts(app, receipts)
    producer = make_app("producer")
    queue = f"{prefix}.jobs"
    handled: Counter[int] = Counter()

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int
        seconds: float = 0.01

    @app.task(queue=queue)
    async def work(msg: Job, ctx: Context) -> None:
        await asyncio.sleep(msg.seconds)
        handled[msg.n] += 1

    producer.register(Job)
    async with app:
        pass  # declares the worker's queue, so the producer can fill it first
    async with producer:
        # Every 25th runs for 3 s: still running when the connection goes, and
        # delivered again once it is back.
        jobs = [Job(n=n, seconds=3 if n % 25 == 0 else 0.01) for n in range(400)]
        await asyncio.gather(*(producer.publish(job) for job in jobs))
    worker = await start_worker(app, prefetch=20, concurrency=10)
    await eventually(lambda: len(handled) >= 100, timeout=30)
    held_at_cut = len(receipts)
    assert proxy.cut() == 1
    await eventually(lambda: len(handled) == len(jobs), timeout=60)

    assert await queue_depth(amqp, suspect_queue_name(queue)) == 0
    assert await queue_depth(amqp, queue) == 0
    moved = set(MOVED.findall(caplog.text))
    assert len(moved) == worker.stats().suspects_moved
    # Only deliveries lost on the wire at the cut, which this worker never saw, may
    # take the suspect path; nothing it held, ran or acked just before the cut does.
    first_seen: dict[str, bool] = {}
    for message_id, redelivered in receipts:
        first_seen.setdefault(message_id, redelivered)
    assert all(first_seen[message_id] for message_id in moved), moved
    assert len(moved) <= 20  # at most a prefetch window
    redelivered_seen = [r for r in receipts[held_at_cut:] if r[1]]
    assert len(redelivered_seen) > len(moved)  # the cut did return held messages


async def test_the_gate_lets_an_alone_run_in_after_the_shared_ones_and_keeps_new_ones_out() -> None:
    gate = Gate()
    log: list[str] = []
    finish_first = asyncio.Event()

    async def shared(name: str, until: asyncio.Event | None = None) -> None:
        await gate.enter_shared()
        log.append(f"{name} in")
        try:
            if until is not None:
                await until.wait()
        finally:
            gate.leave_shared()
        log.append(f"{name} out")

    async def alone() -> None:
        async with gate.alone():
            log.append("alone in")
            assert gate.running == 1
            await asyncio.sleep(0.01)
        log.append("alone out")

    first = asyncio.ensure_future(shared("first", finish_first))
    await eventually(lambda: log == ["first in"])
    lone = asyncio.ensure_future(alone())
    await asyncio.sleep(0)
    late = asyncio.ensure_future(shared("late"))
    await asyncio.sleep(0.02)
    assert log == ["first in"]  # the alone run waits; the late shared one waits behind it
    finish_first.set()
    await asyncio.gather(first, lone, late)
    assert log == ["first in", "first out", "alone in", "alone out", "late in", "late out"]
    assert gate.running == 0
