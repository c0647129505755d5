"""The one move operation (`rabbitworker.move.move`), on RabbitMQ: the copy reaches
its queue with its headers changed, the original is acked only once the copy is
confirmed, and a move that fails at either step loses nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from rabbitworker import App, TaskMessage
from rabbitworker.errors import UnroutableError
from rabbitworker.move import move
from rabbitworker.transport import Browser, Delivery
from rabbitworker.wire import ATTEMPT, ORIGINAL_ROUTING_KEY, message_properties


class Job(TaskMessage, routing_key="moves.job"):
    n: int


def two_queue_app(make_app: Callable[..., App], prefix: str) -> App:
    app = make_app()

    @app.task(queue=f"{prefix}.from")
    async def source(msg: Job) -> None:
        pass

    class Other(TaskMessage, routing_key=f"{prefix}.other"):
        pass

    @app.task(queue=f"{prefix}.to")
    async def target(msg: Other) -> None:
        pass

    return app


@contextlib.asynccontextmanager
async def held(app: App, queue: str) -> AsyncIterator[tuple[Browser, Delivery]]:
    """A message "m1" published to `queue` and taken, unacked, until the block ends."""
    properties = message_properties("moves.job", message_id="m1", headers={"x-note": "a"})
    await app.transport.send("", queue, Job(n=1).model_dump_json().encode(), properties)
    async with app.transport.browse(queue) as browser:
        [delivery] = await browser.take()
        yield browser, delivery


async def ids(app: App, queue: str) -> list[str]:
    """The ids of the messages in `queue` (they go back when the browser closes)."""
    async with app.transport.browse(queue) as browser:
        return [m.message_id for m in await browser.take()]


async def depth(app: App, queue: str) -> int:
    info = await app.transport.inspect(queue)
    assert info is not None
    return info.messages


async def test_a_move_sends_a_confirmed_copy_with_its_headers_changed_then_acks(
    make_app: Callable[..., App], prefix: str
) -> None:
    app = two_queue_app(make_app, prefix)
    source, target = f"{prefix}.from", f"{prefix}.to"
    told: list[int] = []

    async def before_ack() -> None:
        told.append(await depth(app, target))  # the copy is in before the ack

    async with app:
        async with held(app, source) as (_, delivery):
            moved = await move(
                app.transport,
                delivery,
                "",
                target,
                set_headers={ATTEMPT: 7},
                drop_headers=("x-note",),
                before_ack=before_ack,
            )
        assert moved and told == [1]
        assert await depth(app, source) == 0  # acked: not returned when the browser closed
        async with app.transport.browse(target) as browser:
            [copy] = await browser.take()
    assert copy.message_id == "m1" and copy.body == delivery.body
    assert copy.headers[ATTEMPT] == 7 and "x-note" not in copy.headers
    assert copy.headers[ORIGINAL_ROUTING_KEY] == source  # first delivered by its queue name
    assert copy.properties.delivery_mode == 2


async def test_a_move_whose_copy_is_refused_leaves_the_original_held(
    make_app: Callable[..., App], prefix: str
) -> None:
    app = two_queue_app(make_app, prefix)
    source = f"{prefix}.from"
    async with app:
        async with held(app, source) as (_, delivery):
            with pytest.raises(UnroutableError):
                await move(app.transport, delivery, "", f"{prefix}.nowhere")
        # Never acked: back in its queue once the browser closed.
        assert await ids(app, source) == ["m1"]


async def test_a_move_whose_ack_fails_returns_false_and_the_broker_keeps_the_original(
    make_app: Callable[..., App], prefix: str
) -> None:
    app = two_queue_app(make_app, prefix)
    source, target = f"{prefix}.from", f"{prefix}.to"
    async with app:
        async with held(app, source) as (browser, delivery):
            await browser.channel.close()  # type: ignore[attr-defined]  # the AMQP browser's
            assert not await move(app.transport, delivery, "", target)
        # A duplicate at worst, never a loss: the copy and the original, same id.
        assert await ids(app, target) == ["m1"]
        assert await ids(app, source) == ["m1"]
