"""The one move operation (`rabbitworker.move.move`), on RabbitMQ: the copy reaches
its queue with its headers changed, the original is acked only once the copy is
confirmed, and a move that fails at either step loses nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rabbitworker import App, TaskMessage
from rabbitworker.errors import UnroutableError
from rabbitworker.move import move
from rabbitworker.transport import Browser
from rabbitworker.wire import ATTEMPT, ORIGINAL_ROUTING_KEY, Properties, message_properties


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


def properties(message_id: str) -> Properties:
    return message_properties("moves.job", message_id=message_id, headers={"x-note": "a"})


async def ids(browser: Browser) -> list[str]:
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
    async with app:
        await app.transport.send("", source, Job(n=1).model_dump_json().encode(), properties("m1"))
        async with app.transport.browse(source) as browser:
            [delivery] = await browser.take()
            told: list[int] = []

            async def before_ack() -> None:
                told.append(await depth(app, target))  # the copy is in before the ack

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
        await app.transport.send("", source, b"{}", properties("m1"))
        async with app.transport.browse(source) as browser:
            [delivery] = await browser.take()
            with pytest.raises(UnroutableError):
                await move(app.transport, delivery, "", f"{prefix}.nowhere")
        # Never acked: back in its queue once the browser closed.
        async with app.transport.browse(source) as browser:
            assert await ids(browser) == ["m1"]


async def test_a_move_whose_ack_fails_returns_false_and_the_broker_keeps_the_original(
    make_app: Callable[..., App], prefix: str
) -> None:
    app = two_queue_app(make_app, prefix)
    source, target = f"{prefix}.from", f"{prefix}.to"
    async with app:
        await app.transport.send("", source, b"{}", properties("m1"))
        async with app.transport.browse(source) as browser:
            [delivery] = await browser.take()
            await browser.channel.close()  # type: ignore[attr-defined]  # the AMQP browser's
            assert not await move(app.transport, delivery, "", target)
        # A duplicate at worst, never a loss: the copy and the original, same id.
        async with app.transport.browse(target) as browser:
            assert await ids(browser) == ["m1"]
        async with app.transport.browse(source) as browser:
            assert await ids(browser) == ["m1"]
