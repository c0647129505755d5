"""The wire contract of docs/wire-format.md, exercised the way a client in another
language would: publishing with a raw AMQP client, not through rabbitworker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aio_pika
from pydantic import BaseModel
from support import eventually, get_all, queue_depth

from rabbitworker import App, Context, RetryPolicy, TaskMessage
from rabbitworker.topology import dead_letter_queue_name


async def test_a_message_without_id_or_type_gets_an_id_on_receipt_kept_through_retries_and_dlq(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    amqp: aio_pika.abc.AbstractConnection,
) -> None:
    app = make_app()
    queue = f"{prefix}.orders"
    seen: list[tuple[str, int]] = []

    class Order(TaskMessage, routing_key=f"{prefix}.order.created"):
        order_id: int

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=2, backoff=[0.05]))
    async def created(msg: Order, ctx: Context) -> None:
        seen.append((ctx.message_id, ctx.attempt))
        raise ValueError("the warehouse is closed")

    await start_worker(app)
    channel = await amqp.channel()
    exchange = await channel.get_exchange(app.exchange)
    # The minimum a foreign producer sends: a JSON body and the routing key. No
    # message_id, no type, no headers; aio-pika adds no message id of its own here.
    await exchange.publish(
        aio_pika.Message(b'{"order_id": 17}', content_type="application/json"),
        routing_key=Order.routing_key,
    )
    await channel.close()

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, dead_letter_queue_name(queue)) == 1

    await eventually(dead_lettered)
    [letter] = await get_all(amqp, dead_letter_queue_name(queue))
    [(first_id, first), (second_id, second)] = seen
    assert (first, second) == (1, 2)
    assert first_id and first_id == second_id == letter.message_id
    assert letter.type == Order.routing_key  # dispatched by routing key, recorded as type
    headers = letter.headers or {}
    assert headers["x-attempt"] == 2
    assert headers["x-error-type"] == "ValueError"
    assert headers["x-original-routing-key"] == Order.routing_key
    assert json.loads(letter.body) == {"order_id": 17}


class Sum(BaseModel):
    total: int


async def test_a_foreign_rpc_request_gets_a_reply_with_its_correlation_id_and_status(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    amqp: aio_pika.abc.AbstractConnection,
) -> None:
    app = make_app()

    class Add(TaskMessage[Sum], routing_key=f"{prefix}.math.add"):
        a: int
        b: int

    @app.task(queue=f"{prefix}.math")
    async def add(msg: Add) -> Sum:
        if msg.a < 0:
            raise ArithmeticError("negative numbers are not supported")
        return Sum(total=msg.a + msg.b)

    await start_worker(app)
    channel = await amqp.channel()
    replies = await channel.declare_queue(exclusive=True)  # a reply queue of its own
    exchange = await channel.get_exchange(app.exchange)
    for correlation_id, body in (("c-ok", b'{"a": 2, "b": 3}'), ("c-err", b'{"a": -1, "b": 0}')):
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                type=Add.routing_key,
                message_id=f"m-{correlation_id}",
                correlation_id=correlation_id,
                reply_to=replies.name,
            ),
            routing_key=Add.routing_key,
        )
    got: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}

    async def both_replied() -> bool:
        message = await replies.get(no_ack=True, fail=False)
        if message is not None:
            got[message.correlation_id or ""] = message
        return len(got) == 2

    await eventually(both_replied)
    await channel.close()
    ok, err = got["c-ok"], got["c-err"]
    assert (ok.headers or {})["x-rpc-status"] == "ok"
    assert ok.content_type == "application/json"
    assert json.loads(ok.body) == {"total": 5}
    assert (err.headers or {})["x-rpc-status"] == "error"
    assert json.loads(err.body) == {
        "type": "ArithmeticError",
        "message": "negative numbers are not supported",
    }
