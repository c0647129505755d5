"""One behaviour, two brokers: every test here runs on RabbitMQ and on
rabbitworker.testing's TestBroker, and must pass the same way on both (routing with
wildcards, mandatory publishing, retries and attempts, dead-letter headers, the
delivery limit of the broker and of crashed workers, RPC, delayed publishing). The
known differences are tested as such at the end; docs/testing.md lists them."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from pydantic import BaseModel
from support import eventually
from support.rigs import MemoryRig, RabbitRig, Rig

from rabbitworker import Context, Reject, RetryPolicy, TaskMessage
from rabbitworker.errors import RemoteError, UnroutableError
from rabbitworker.topology import (
    BROKER_DELIVERY_LIMIT_FLOOR,
    QueueSpec,
    dead_letter_queue_name,
    suspect_queue_name,
)
from rabbitworker.wire import message_properties


@pytest.fixture(params=["rabbitmq", "memory"])
async def rig(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Rig]:
    made: Rig
    if request.param == "rabbitmq":
        made = RabbitRig(prefix, request.getfixturevalue("broker_url"))
    else:
        made = MemoryRig(prefix)
    yield made
    await made.close()


class Marker(TaskMessage, routing_key="marker"):
    pass


class Orders(TaskMessage, routing_key="orders"):
    pass


class OrdersCreated(TaskMessage, routing_key="orders.created"):
    pass


class OrdersEuCreated(TaskMessage, routing_key="orders.eu.created"):
    pass


class OrdersShipped(TaskMessage, routing_key="orders.shipped"):
    pass


class OrdersEuShipped(TaskMessage, routing_key="orders.eu.shipped"):
    pass


class OrdersEuDeShipped(TaskMessage, routing_key="orders.eu.de.shipped"):
    pass


class BillingCreated(TaskMessage, routing_key="billing.created"):
    pass


EVENTS: list[TaskMessage[Any]] = [
    Orders(),
    OrdersCreated(),
    OrdersEuCreated(),
    OrdersShipped(),
    OrdersEuShipped(),
    OrdersEuDeShipped(),
    BillingCreated(),
]
ALL = {type(e).routing_key for e in EVENTS}
# What RabbitMQ routes to a queue bound with each pattern: `#` matches zero or more
# words (at the end, the start or in the middle), `*` exactly one.
ROUTES = {
    "orders.#": ALL - {"billing.created"},
    "orders.*": {"orders.created", "orders.shipped"},
    "orders.#.shipped": {"orders.shipped", "orders.eu.shipped", "orders.eu.de.shipped"},
    "orders.*.shipped": {"orders.eu.shipped"},
    "#.created": {"orders.created", "orders.eu.created", "billing.created"},
    "*.created": {"orders.created", "billing.created"},
    "*.*.#": ALL - {"orders"},
    "#": ALL,
}


async def test_topic_patterns_route_every_key_as_rabbitmq_does(rig: Rig) -> None:
    app = rig.app()
    queues = {pattern: rig.q(f"route{n}") for n, pattern in enumerate(ROUTES)}
    for pattern, queue in queues.items():

        async def handle(msg: Marker) -> None:
            pass

        app.task(queue=queue, bind=[pattern])(handle)
    async with rig.running(app, worker=False):
        for event in EVENTS:
            await app.publish(event)
        for pattern, queue in queues.items():
            got = [d.type for d in await rig.take(app, queue)]
            assert sorted(got) == sorted(ROUTES[pattern]), pattern


async def test_a_key_no_queue_binds_is_unroutable_now_and_delayed(rig: Rig) -> None:
    app = rig.app()

    @app.task(queue=rig.q("created"), bind=["orders.*"])
    async def handle(msg: Marker) -> None:
        pass

    async with rig.running(app, worker=False):
        await app.publish(OrdersCreated())
        with pytest.raises(UnroutableError):
            await app.publish(OrdersEuCreated())
        with pytest.raises(UnroutableError):
            await app.publish(BillingCreated(), delay=rig.seconds(5))
        assert await rig.depth(app, rig.q("created")) == 1


class Job(TaskMessage, routing_key="jobs.run"):
    n: int


async def test_a_failing_message_is_retried_by_its_backoff_then_dead_lettered(rig: Rig) -> None:
    backoff = [rig.seconds(s) for s in (1, 10, 60)]
    app = rig.app()
    queue = rig.q("jobs")
    seen: list[tuple[int, str, float]] = []

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=4, backoff=backoff))
    async def run(msg: Job, ctx: Context) -> None:
        seen.append((ctx.attempt, ctx.message_id, rig.clock()))
        raise ValueError(f"attempt {ctx.attempt} of job {msg.n}")

    dlq = dead_letter_queue_name(queue)
    async with rig.running(app):
        started = time.perf_counter()
        message_id = await app.publish(Job(n=7))
        await rig.settle(lambda: rig.holds(app, dlq, 1))
        wall = time.perf_counter() - started
        [letter] = await rig.take(app, dlq)
    assert [(a, m) for a, m, _ in seen] == [(n, message_id) for n in (1, 2, 3, 4)]
    waits = [later[2] - earlier[2] for earlier, later in itertools.pairwise(seen)]
    assert all(w >= b for w, b in zip(waits, backoff, strict=True)), (waits, backoff)
    assert letter.message_id == message_id
    assert letter.body == Job(n=7).model_dump_json().encode()
    assert letter.properties.type == "jobs.run"
    headers = letter.headers
    assert headers["x-attempt"] == 4
    assert headers["x-error-type"] == "ValueError"
    assert headers["x-error-message"] == "attempt 4 of job 7"
    assert headers["x-original-queue"] == queue
    assert headers["x-original-routing-key"] == "jobs.run"
    assert datetime.fromisoformat(str(headers["x-failed-at"])).tzinfo is not None
    if rig.kind == "memory":
        print(f"retry [1, 10, 60] s and dead letter on TestBroker: {wall * 1000:.1f} ms wall")
        assert wall < 1.0
        assert waits == [1.0, 10.0, 60.0]


DEAD_LETTER_HEADERS = {
    "x-attempt",
    "x-original-routing-key",
    "x-error-type",
    "x-error-message",
    "x-failed-at",
    "x-original-queue",
    "x-delivery-count",  # the quorum dead-letter queue's own
}


async def test_rejected_and_undecodable_messages_are_dead_lettered_at_once_alike(rig: Rig) -> None:
    app = rig.app()
    queue = rig.q("strict")
    attempts: list[int] = []

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[rig.seconds(1)]))
    async def run(msg: Job, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise Reject(f"job {msg.n} is not wanted")

    dlq = dead_letter_queue_name(queue)
    async with rig.running(app):
        rejected = await app.publish(Job(n=3))
        bad = message_properties("jobs.run")
        await app.transport.send(app.exchange, "jobs.run", b'{"n": "three"}', bad)
        await rig.settle(lambda: rig.holds(app, dlq, 2))
        letters = {d.message_id: d for d in await rig.take(app, dlq)}
    assert attempts == [1]
    first, second = letters[rejected].headers, letters[bad.message_id or ""].headers
    assert set(first) == set(second) == DEAD_LETTER_HEADERS
    assert (first["x-error-type"], first["x-error-message"]) == ("Reject", "job 3 is not wanted")
    assert second["x-error-type"] == "DecodeError"
    assert first["x-attempt"] == second["x-attempt"] == 1
    assert first["x-delivery-count"] == second["x-delivery-count"] == 0


async def test_a_message_returned_past_the_delivery_limit_is_dead_lettered_by_the_broker(
    rig: Rig,
) -> None:
    app = rig.app(delivery_limit=2)  # the broker's own limit never goes below its floor
    queue = rig.q("limited")

    @app.task(queue=queue)
    async def run(msg: Job) -> None:
        pass

    dlq = dead_letter_queue_name(queue)
    seen: list[tuple[bool, int]] = []
    async with rig.running(app, worker=False):
        await app.publish(Job(n=1))
        for _ in range(BROKER_DELIVERY_LIMIT_FLOOR + 1):
            await rig.settle(lambda: rig.holds(app, queue, 1))
            async with app.transport.browse(queue) as browser:
                [delivery] = await browser.take(1)
                seen.append((delivery.redelivered, delivery.headers["x-delivery-count"]))
                await delivery.nack(requeue=True)
        await rig.settle(lambda: rig.holds(app, dlq, 1))
        assert await rig.depth(app, queue) == 0
        [letter] = await rig.take(app, dlq)
    assert seen == [(False, 0)] + [(True, n) for n in range(1, BROKER_DELIVERY_LIMIT_FLOOR + 1)]
    [death] = letter.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", queue, 1)
    assert letter.headers["x-first-death-reason"] == "delivery_limit"
    assert letter.headers["x-first-death-queue"] == queue
    assert (letter.exchange, letter.routing_key) == (f"{app.exchange}.dlx", queue)


async def test_a_message_whose_worker_dies_with_it_delivery_limit_times_is_worker_crashed(
    rig: Rig,
) -> None:
    app = rig.app(delivery_limit=2)
    queue = rig.q("fatal")
    runs: list[tuple[int, bool]] = []

    @app.task(queue=queue)
    async def run(msg: Job, ctx: Context) -> None:
        runs.append((msg.n, ctx.redelivered))
        await asyncio.Event().wait()  # until its worker dies

    dlq = dead_letter_queue_name(queue)
    async with rig.running(app):
        message_id = await app.publish(Job(n=1))
        for crashes in (1, 2, 3):  # beside others once, then alone until the limit
            await eventually(lambda n=crashes: len(runs) == n, timeout=10)  # type: ignore[misc]
            await rig.crash(app)
        await rig.settle(lambda: rig.holds(app, dlq, 1))
        [letter] = await rig.take(app, dlq)
        assert await rig.depth(app, suspect_queue_name(queue)) == 0
    assert runs == [(1, False)] * 3
    assert letter.message_id == message_id
    assert letter.headers["x-error-type"] == "WorkerCrashed"
    assert letter.headers["x-original-queue"] == queue


class Square(BaseModel):
    value: int


class Compute(TaskMessage[Square], routing_key="math.square"):
    n: int


async def test_rpc_returns_the_typed_reply_or_raises_the_remote_error(rig: Rig) -> None:
    app = rig.app()
    queue = rig.q("math")

    @app.task(queue=queue)
    async def square(msg: Compute) -> Square:
        if msg.n < 0:
            raise ValueError(f"no square for {msg.n} here")
        return Square(value=msg.n * msg.n)

    dlq = dead_letter_queue_name(queue)
    async with rig.running(app):
        assert await app.call(Compute(n=12), timeout=10) == Square(value=144)
        pending = await app.submit(Compute(n=3))
        with pytest.raises(RemoteError) as caught:
            await app.call(Compute(n=-1), timeout=10)
        assert await pending.result(timeout=10) == Square(value=9)
        await rig.settle(lambda: rig.holds(app, dlq, 1))
        [letter] = await rig.take(app, dlq)
    assert (caught.value.remote_type, caught.value.remote_message) == (
        "ValueError",
        "no square for -1 here",
    )
    assert letter.headers["x-attempt"] == 1  # a request is not retried unless asked


async def test_a_delayed_message_is_handled_no_earlier_than_its_delay(rig: Rig) -> None:
    delay = rig.seconds(30)
    app = rig.app()
    handled: list[tuple[int, float]] = []

    @app.task(queue=rig.q("later"))
    async def run(msg: Job) -> None:
        handled.append((msg.n, rig.clock()))

    async with rig.running(app):
        published = rig.clock()
        await app.publish(Job(n=1), delay=delay)
        await app.publish(Job(n=2))
        await rig.settle(lambda: len(handled) == 2)
    assert [n for n, _ in handled] == [2, 1]
    assert handled[1][1] - published >= delay
    if rig.kind == "memory":
        assert handled[1][1] - published == delay  # virtual time moves to the instant


async def test_a_lock_is_held_by_one_connection_until_released_or_closed(rig: Rig) -> None:
    """What the beat's leadership rests on (`Transport.take_lock`)."""
    app = rig.app()

    @app.task(queue=rig.q("locked"))
    async def run(msg: Job) -> None:
        pass

    name = rig.q("lock")
    async with rig.running(app, worker=False):
        other = app.make_transport()
        await other.open()
        try:
            assert await app.transport.probe_lock(name) == "free"
            lock = await app.transport.take_lock(name)
            assert lock is not None and lock.held
            assert await other.take_lock(name) is None  # another connection holds it
            assert await other.probe_lock(name) == "held"  # looking did not take it
            await lock.release(5)
            assert not lock.held and await other.probe_lock(name) == "free"
            taken = await other.take_lock(name)
            assert taken is not None and await app.transport.take_lock(name) is None
        finally:
            await other.close()
        await asyncio.wait_for(taken.wait_lost(), 5)  # gone with its connection
        assert not taken.held and await app.transport.probe_lock(name) == "free"


async def test_a_queue_with_a_length_limit_keeps_the_newest_messages(rig: Rig) -> None:
    """What keeps a schedule's last tick on the broker (the beat's state queue)."""
    app = rig.app()

    @app.task(queue=rig.q("limited"))
    async def run(msg: Job) -> None:
        pass

    spec = QueueSpec(rig.q("last"), {"x-queue-type": "classic", "x-max-length": 2}, role="test")
    rig.extra_queues.append(spec.name)
    async with rig.running(app, worker=False):
        await app.transport.ensure_queue(spec)
        for n in range(1, 5):
            properties = message_properties("last", message_id=f"m{n}")
            await app.transport.send("", spec.name, b"{}", properties)
        assert [m.message_id for m in await rig.take(app, spec.name)] == ["m3", "m4"]
        assert [m.message_id for m in await rig.take(app, spec.name)] == ["m3", "m4"]


async def test_known_difference_timestamps_are_wall_clock_while_delays_are_virtual(
    rig: Rig,
) -> None:
    """TestBroker moves its own clock for TTLs (retries, delays), but the timestamps
    rabbitworker writes (`timestamp`, `x-failed-at`) come from the wall clock: there a
    60 s back-off takes no time."""
    app = rig.app()
    queue = rig.q("stamped")

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=2, backoff=[rig.seconds(60)]))
    async def run(msg: Job) -> None:
        raise ValueError("no")

    dlq = dead_letter_queue_name(queue)
    async with rig.running(app):
        started = rig.clock()
        await app.publish(Job(n=1))
        await rig.settle(lambda: rig.holds(app, dlq, 1))
        elapsed = rig.clock() - started
        [letter] = await rig.take(app, dlq)
    stamped = datetime.fromisoformat(str(letter.headers["x-failed-at"]))
    assert letter.properties.timestamp is not None
    span = (stamped - letter.properties.timestamp).total_seconds()
    if rig.kind == "memory":
        assert elapsed == 60 and span < 5
    else:
        assert span >= elapsed - 1  # the timestamp has whole seconds only
