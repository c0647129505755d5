"""Dead letters: what lands in `<queue>.dlq`, with which headers, after the last
attempt or at once (Reject, bad bodies, unknown types), and the broker's delivery
limit as the backstop for a message that kills the worker process."""

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
from support import APPS, eventually, get_all, queue_depth, read_record

from rabbitworker import App, Context, Reject, RetryPolicy, TaskMessage
from rabbitworker.topology import dead_letter_queue_name

sys.path.insert(0, str(APPS))

from failures_support import app_module, run_cli

ERROR_HEADERS = (
    "x-error-type",
    "x-error-message",
    "x-failed-at",
    "x-attempt",
    "x-original-queue",
    "x-original-routing-key",
)


async def test_after_its_last_attempt_a_message_is_dead_lettered_with_the_error_headers(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    queue = f"{prefix}.jobs"
    attempts: list[int] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise ValueError(f"job {msg.n} cannot be done")

    await start_worker(app)
    before = datetime.now(UTC)
    message_id = await app.publish(Job(n=7), headers={"tenant": "acme"})

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, dead_letter_queue_name(queue)) == 1

    await eventually(dead_lettered)
    [letter] = await get_all(amqp, dead_letter_queue_name(queue))
    headers = letter.headers or {}
    assert attempts == [1, 2, 3]
    assert all(name in headers for name in ERROR_HEADERS)
    assert headers["x-error-type"] == "ValueError"
    assert headers["x-error-message"] == "job 7 cannot be done"
    assert headers["x-attempt"] == 3
    assert headers["x-original-queue"] == queue
    assert headers["x-original-routing-key"] == f"{prefix}.job"
    failed_at = datetime.fromisoformat(str(headers["x-failed-at"]))
    assert before - timedelta(seconds=1) <= failed_at <= datetime.now(UTC)
    # The dead letter is the message itself: same id, type, body and own headers.
    assert letter.message_id == message_id
    assert letter.type == f"{prefix}.job"
    assert json.loads(letter.body) == {"n": 7}
    assert headers["tenant"] == "acme"
    assert not any(str(k).startswith("x-death") for k in headers)
    assert await queue_depth(amqp, queue) == 0


async def test_a_rejected_message_and_every_bad_body_are_dead_lettered_on_the_first_try(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    queue = f"{prefix}.orders"
    handled: list[int] = []

    class Order(TaskMessage, routing_key=f"{prefix}.order"):
        n: int
        sku: str

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[0.05]))
    async def order(msg: Order) -> None:
        handled.append(msg.n)
        if msg.n < 0:
            raise Reject(f"order {msg.n} is not for us")

    await start_worker(app)
    channel = await amqp.channel()
    exchange = await channel.get_exchange(app.exchange)
    key = f"{prefix}.order"
    bad = {
        "not-json": (b"this is not json", key),
        "wrong-type": (b'{"n": "seven", "sku": "a"}', key),
        "missing-field": (b'{"n": 7}', key),
        "unknown-type": (b'{"n": 7, "sku": "a"}', f"{prefix}.refund"),
    }
    for message_id, (body, message_type) in bad.items():
        # Published raw, as a producer in another language might; the unknown type
        # reaches the queue straight through the default exchange.
        raw = aio_pika.Message(body, message_id=message_id, type=message_type)
        if message_type == key:
            await exchange.publish(raw, key)
        else:
            await channel.default_exchange.publish(raw, queue)
    await app.publish(Order(n=-1, sku="x"), message_id="rejected")
    await app.publish(Order(n=1, sku="good"), message_id="good")

    async def all_dead_lettered() -> bool:
        return await queue_depth(amqp, dead_letter_queue_name(queue)) == 5

    await eventually(all_dead_lettered)
    letters = {
        m.message_id: m.headers or {} for m in await get_all(amqp, dead_letter_queue_name(queue))
    }
    await channel.close()
    expected = {
        "not-json": ("DecodeError", "invalid JSON"),
        "wrong-type": ("DecodeError", "n: Input should be a valid integer"),
        "missing-field": ("DecodeError", "sku: Field required"),
        "unknown-type": ("UnknownMessageType", f"no handler for message type '{prefix}.refund'"),
        "rejected": ("Reject", "order -1 is not for us"),
    }
    assert set(letters) == set(expected)
    for message_id, (error_type, reason) in expected.items():
        headers = letters[message_id]
        assert headers["x-error-type"] == error_type, message_id
        assert reason in str(headers["x-error-message"]), (message_id, headers["x-error-message"])
        assert headers["x-attempt"] == 1, message_id  # on the first try, never retried
        assert headers["x-original-queue"] == queue
    # The worker kept going: the good order after them was handled, the rejected one once.
    await eventually(lambda: 1 in handled)
    assert sorted(handled) == [-1, 1]
    assert await queue_depth(amqp, queue) == 0


async def test_a_message_that_kills_the_worker_every_time_is_dead_lettered_after_the_delivery_limit(
    broker_url: str, prefix: str, tmp_path: Path, worker_process: Any, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module(
        "failures_crash", prefix=prefix, record=record, broker_url=broker_url
    ) as m:
        queue = m.name("poison")
        async with m.app:
            message_id = await m.app.publish(m.Poison(n=1))

        async def dead_lettered() -> bool:
            return await queue_depth(amqp, dead_letter_queue_name(queue)) == 1

        # Restart the worker each time it dies, as a supervisor would, until the
        # message is dead-lettered; a bound keeps a regression from looping.
        workers: list[Any] = []
        while not await dead_lettered():
            assert len(workers) < 6, "the delivery limit did not stop the crash loop"
            worker = worker_process("--app", "failures_crash:app")
            workers.append(worker)

            async def died_or_dead_lettered(w: Any = worker) -> bool:
                return w.proc.poll() is not None or await dead_lettered()

            await eventually(died_or_dead_lettered, timeout=30)
        crashes = [line for line in read_record(tmp_path) if line[0] == "crash"]
        # delivery_limit=2: the first death (shared with whatever else the worker held),
        # then two deaths while it ran alone as a suspect; the next worker dead-letters it.
        assert [line[2] for line in crashes] == [message_id] * 3
        assert len({line[3] for line in crashes}) == 3  # three different processes
        assert all(w.proc.returncode == 3 for w in workers[:3])

        listed = await run_cli(
            "dlq", "list", "--app", "failures_crash:app", "--queue", queue, "--json",
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip
        assert listed.code == 0, listed.stderr
        [letter] = json.loads(listed.stdout)
        assert letter["message_id"] == message_id
        assert letter["error_type"] == "WorkerCrashed"
        assert "died while this message ran alone, 2 time(s)" in letter["error_message"]
        assert letter["original_queue"] == queue
        assert datetime.fromisoformat(letter["failed_at"]).tzinfo is not None
        table = await run_cli(
            "dlq", "list", "--app", "failures_crash:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip
        assert message_id in table.stdout
        assert "WorkerCrashed" in table.stdout
        assert await queue_depth(amqp, queue) == 0
        for worker in workers:
            worker.stop()
