"""`Deduplicate`: a handler runs once per message id and queue, only successes are
remembered, and the in-memory store is bounded and forgets after its ttl."""

from __future__ import annotations

from typing import Any

from support import eventually, queue_depth

from rabbitworker import App, Context, Deduplicate, RetryPolicy, TaskMessage
from rabbitworker.middleware import DedupStore, MemoryDedupStore
from rabbitworker.topology import dead_letter_queue_name


async def stop(worker: Any) -> None:
    """Stop an in-process worker and wait until its connection is closed, so any
    delivery it did not ack is back in its queue."""
    worker.stop()
    await eventually(lambda: worker.app._session is None, timeout=30)


async def test_a_message_published_twice_with_one_id_is_handled_once_and_both_are_acked(
    make_app: Any, start_worker: Any, amqp: Any, prefix: str
) -> None:
    dedup = Deduplicate()
    app: App = make_app(middleware=[dedup])
    queue = f"{prefix}.orders"
    handled: list[str] = []

    class PlaceOrder(TaskMessage, routing_key=f"{prefix}.order"):
        order: int

    @app.task(queue=queue)
    async def place(msg: PlaceOrder, ctx: Context) -> None:
        handled.append(ctx.message_id)

    async with app:
        await app.publish(PlaceOrder(order=1), message_id="order-1")
        await app.publish(PlaceOrder(order=1), message_id="order-1")
        await app.publish(PlaceOrder(order=2), message_id="order-2")
    worker = await start_worker(app, concurrency=1)
    await eventually(lambda: worker.stats().handled == 3)
    await stop(worker)

    assert sorted(handled) == ["order-1", "order-2"]
    assert dedup.skipped == 1
    assert await queue_depth(amqp, queue) == 0
    assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 0


async def test_a_failed_attempt_is_not_remembered_so_its_retry_still_runs(
    make_app: Any, start_worker: Any, amqp: Any, prefix: str
) -> None:
    dedup = Deduplicate()
    app: App = make_app(middleware=[dedup])
    queue = f"{prefix}.flaky"
    attempts: list[int] = []

    class Flaky(TaskMessage, routing_key=f"{prefix}.flaky"):
        pass

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=3, backoff=[]))
    async def flaky(msg: Flaky, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")

    async with app:
        await app.publish(Flaky(), message_id="flaky-1")
    worker = await start_worker(app)  # connects the app again: publishing through it works
    await eventually(lambda: worker.stats().handled == 2)
    assert attempts == [1, 2]

    # Now that it succeeded, the same id again is acked without running.
    await app.publish(Flaky(), message_id="flaky-1")
    await eventually(lambda: worker.stats().handled == 3)
    await stop(worker)
    assert attempts == [1, 2]
    assert dedup.skipped == 1
    assert await queue_depth(amqp, queue) == 0
    assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 0


async def test_one_message_routed_to_two_queues_runs_on_both(
    make_app: Any, start_worker: Any, prefix: str
) -> None:
    dedup = Deduplicate()
    app: App = make_app(middleware=[dedup])
    handled: list[tuple[str, str]] = []

    class Signup(TaskMessage, routing_key=f"{prefix}.signup"):
        user: int

    @app.task(queue=f"{prefix}.emails")
    async def email(msg: Signup, ctx: Context) -> None:
        handled.append((ctx.queue, ctx.message_id))

    @app.task(queue=f"{prefix}.billing")
    async def billing(msg: Signup, ctx: Context) -> None:
        handled.append((ctx.queue, ctx.message_id))

    async with app:
        message_id = await app.publish(Signup(user=7))
    worker = await start_worker(app)
    await eventually(lambda: worker.stats().handled == 2)
    assert sorted(handled) == [(f"{prefix}.billing", message_id), (f"{prefix}.emails", message_id)]
    assert dedup.skipped == 0


async def test_the_memory_store_forgets_an_id_after_its_ttl() -> None:
    now = 1000.0
    store = MemoryDedupStore(clock=lambda: now)
    await store.remember("a", ttl=10)
    assert await store.seen("a")
    now += 9.9
    assert await store.seen("a")
    now += 0.2
    assert not await store.seen("a")
    assert len(store) == 0


async def test_the_memory_store_keeps_at_most_its_bound_and_forgets_the_oldest_first() -> None:
    store = MemoryDedupStore(max_entries=3)
    for key in "abcde":
        await store.remember(key, ttl=60)
    assert len(store) == 3
    assert [await store.seen(key) for key in "abcde"] == [False, False, True, True, True]


def test_the_memory_store_satisfies_the_store_protocol() -> None:
    assert isinstance(MemoryDedupStore(), DedupStore)
    assert isinstance(Deduplicate().store, MemoryDedupStore)
