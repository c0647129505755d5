"""Guards: the maximum message size on publish and on receipt."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from support import eventually, get_all, queue_depth

from rabbitworker import App, TaskMessage
from rabbitworker.errors import MessageTooLarge, PublishError
from rabbitworker.topology import dead_letter_queue_name


async def test_publishing_a_message_over_the_maximum_size_raises_and_sends_nothing(
    make_app: Any, amqp: Any, prefix: str
) -> None:
    app: App = make_app(max_message_size=1024)
    queue = f"{prefix}.notes"

    class Note(TaskMessage, routing_key=f"{prefix}.note"):
        text: str

    @app.task(queue=queue)
    async def note(msg: Note) -> None: ...

    async with app:
        with pytest.raises(MessageTooLarge, match=r"over the maximum of 1024") as raised:
            await app.publish(Note(text="x" * 2000))
        assert isinstance(raised.value, PublishError)
        await app.publish(Note(text="x" * 900))  # under the limit: fine
    [message] = await get_all(amqp, queue)
    assert len(message.body) < 1024


async def test_a_received_message_over_the_maximum_size_goes_to_the_dead_letter_queue(
    make_app: Any, start_worker: Any, amqp: Any, prefix: str
) -> None:
    app: App = make_app(max_message_size=1024)
    queue = f"{prefix}.notes"
    handled: list[str] = []

    class Note(TaskMessage, routing_key=f"{prefix}.note"):
        text: str

    @app.task(queue=queue)
    async def note(msg: Note) -> None:
        handled.append(msg.text)

    # A producer with no limit (or another language) sends a large body anyway.
    body = Note(text="y" * 5000).model_dump_json().encode()
    async with app:
        channel = await amqp.channel()
        exchange = await channel.get_exchange(app.exchange)
        await exchange.publish(
            aio_pika.Message(body, type=Note.routing_key, message_id="big-1"),
            routing_key=Note.routing_key,
        )
        await app.publish(Note(text="small"))
    worker = await start_worker(app)
    await eventually(lambda: worker.stats().handled == 2)
    assert handled == ["small"]

    dlq = dead_letter_queue_name(queue)

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, dlq) == 1

    await eventually(dead_lettered)
    [letter] = await get_all(amqp, dlq)
    assert letter.message_id == "big-1"
    assert letter.body == body  # kept whole, even though it is over the limit
    assert letter.headers["x-error-type"] == "MessageTooLarge"
    assert "over the maximum of 1024" in str(letter.headers["x-error-message"])
    assert await queue_depth(amqp, queue) == 0
