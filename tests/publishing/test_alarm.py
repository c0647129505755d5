"""A broker that blocks publishers (a memory alarm, on a node of our own with a tiny
memory watermark) makes a publish fail with an error that says so, within the
publish timeout, on the API and on the command line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel
from support.cli import rabbitworker
from support.nodes import RabbitCluster, RabbitNode

from rabbitworker import App, TaskMessage
from rabbitworker.errors import NotConfirmed, RabbitWorkerError

PUBLISH_TIMEOUT = 2.0
BLOCKING = "the broker is blocking publishers (a memory or disk alarm on the broker)"


class Sum(BaseModel):
    value: int


class Add(TaskMessage[Sum], routing_key="alarm.add"):
    a: int
    b: int


@pytest.fixture(scope="module")
def alarmed() -> Iterator[RabbitNode]:
    """A node of our own whose memory alarm is on from the start: its watermark is far
    below what the node itself uses."""
    with RabbitCluster(1, config={"vm_memory_high_watermark.absolute": "10MB"}) as cluster:
        node = cluster.nodes[0]
        alarms = node.ctl("eval", "rabbit_alarm:get_alarms().")
        assert "memory" in alarms, alarms
        yield node


def make(url: str, prefix: str) -> App:
    app = App("alarm", url=url, exchange=f"{prefix}.x", publish_timeout=PUBLISH_TIMEOUT)

    @app.task(queue=f"{prefix}.q")
    async def add(msg: Add) -> Sum:
        return Sum(value=msg.a + msg.b)

    return app


async def test_a_publish_blocked_by_a_memory_alarm_says_the_broker_blocks_publishers(
    alarmed: RabbitNode, prefix: str
) -> None:
    async with make(alarmed.url, prefix) as app:
        started = time.monotonic()
        with pytest.raises(NotConfirmed) as raised:
            await app.publish(Add(a=1, b=2))
        took = time.monotonic() - started

        assert BLOCKING in str(raised.value)
        assert PUBLISH_TIMEOUT <= took < PUBLISH_TIMEOUT + 0.5
        assert app.transport.blocked


async def after_a_blocked_publish(app: App, then: Awaitable[Any]) -> Any:
    """`then`, on a connection the broker already blocked: it reads nothing more from
    it, declares and consumes included."""
    with pytest.raises(NotConfirmed):
        await app.publish(Add(a=1, b=2))
    return await then


@pytest.mark.parametrize(
    "what",
    [
        "publish",
        "delayed publish",
        "submit",
        "call",
        "call, timing out first",
        "sync.publish",
        "sync.call, timing out first",
        "a delayed publish after a blocked one",
        "a call after a blocked publish",
    ],
)
async def test_every_way_to_publish_names_the_alarm(
    what: str, alarmed: RabbitNode, prefix: str
) -> None:
    app = make(alarmed.url, prefix)
    ways: dict[str, Callable[[], Any]] = {
        "publish": lambda: app.publish(Add(a=1, b=2)),
        "delayed publish": lambda: app.publish(Add(a=1, b=2), delay=5),
        "submit": lambda: app.submit(Add(a=1, b=2)),
        "call": lambda: app.call(Add(a=1, b=2), timeout=PUBLISH_TIMEOUT + 1),
        "call, timing out first": lambda: app.call(Add(a=1, b=2), timeout=PUBLISH_TIMEOUT / 2),
        "sync.publish": lambda: asyncio.to_thread(app.sync.publish, Add(a=1, b=2)),
        "sync.call, timing out first": lambda: asyncio.to_thread(
            app.sync.call, Add(a=1, b=2), timeout=PUBLISH_TIMEOUT / 2
        ),
        "a delayed publish after a blocked one": lambda: after_a_blocked_publish(
            app, app.publish(Add(a=1, b=2), delay=7)
        ),
        "a call after a blocked publish": lambda: after_a_blocked_publish(
            app, app.call(Add(a=1, b=2), timeout=PUBLISH_TIMEOUT + 1)
        ),
    }
    async with app:
        with pytest.raises(RabbitWorkerError) as raised:
            await ways[what]()

    print(f"\n{what}: {type(raised.value).__name__}: {raised.value}")
    assert BLOCKING in str(raised.value), repr(raised.value)


async def test_the_publish_command_names_the_alarm_in_one_line(
    alarmed: RabbitNode, prefix: str
) -> None:
    run = await asyncio.to_thread(
        rabbitworker, "publish", "math.note", '{"n": 1}', "--app", "rpc_math:app",
        env={"RW_TEST_PREFIX": prefix, "RABBITWORKER_URL": alarmed.url,
             "RABBITWORKER_PUBLISH_TIMEOUT": f"{PUBLISH_TIMEOUT:g}"},
    )  # fmt: skip

    assert BLOCKING in run.error_line()
