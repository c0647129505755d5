"""rabbitworker.testing's own helpers: virtual time (`advance`, `join`), what a test
reads back (published messages, dead letters and their reasons, outcomes), results
on the in-memory store, and that the app runs its real worker path and is given
back as it was. (tests/testing/test_behaviour.py holds it to RabbitMQ's behaviour.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import eventually

from rabbitworker import App, Context, RetryPolicy, TaskMessage, publish
from rabbitworker.context import Context as ContextType
from rabbitworker.errors import BrokerError, HeaderError
from rabbitworker.middleware import Middleware
from rabbitworker.testing import TestBroker
from rabbitworker.topology import BROKER_DELIVERY_LIMIT_FLOOR


class Ping(TaskMessage, routing_key="pings.ping"):
    n: int


class Pong(TaskMessage, routing_key="pings.pong"):
    n: int


def make_app(**options: Any) -> App:
    return App("helpers", **options)


async def test_advance_moves_virtual_time_and_runs_only_what_fell_due() -> None:
    app = make_app()
    handled: list[tuple[int, float]] = []

    @app.task(queue="pings")
    async def ping(msg: Ping) -> None:
        handled.append((msg.n, broker.now))

    async with TestBroker(app) as broker:
        await broker.publish(Ping(n=1), delay=30)
        await broker.advance(29.9)
        assert handled == [] and broker.now == pytest.approx(29.9)
        assert [m.type for m in broker.messages(f"{app.exchange}.delay.30000")] == ["pings.ping"]
        await broker.advance(0.1)
        assert handled == [(1, 30.0)]


async def test_ctx_publish_follow_ups_run_and_every_attempt_is_recorded() -> None:
    app = make_app()
    seen: list[str] = []

    @app.task(queue="pings", retry=RetryPolicy(max_attempts=2, backoff=[5]))
    async def ping(msg: Ping, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        await ctx.publish(Pong(n=msg.n + 1))

    @app.task(queue="pongs")
    async def pong(msg: Pong) -> None:
        seen.append(f"pong {msg.n}")

    async with TestBroker(app) as broker:
        message_id = await broker.publish(Ping(n=1))
        await broker.join()
        assert seen == ["pong 2"]
        kinds = [(o.attempt, o.kind, o.delay_ms, o.at) for o in broker.outcomes(message_id)]
        assert kinds == [(1, "retry", 5000, 0.0), (2, "ack", 0, 5.0)]
        assert [o.queue for o in broker.outcomes()] == ["pings", "pings", "pongs"]
        assert [m.routing_key for m in broker.published("pings")] == ["pings.ping", "pings"]
        assert [m.type for m in broker.published("pongs")] == ["pings.pong"]
        assert broker.dead_letters() == []


async def test_join_names_what_keeps_the_broker_busy_when_it_times_out() -> None:
    app = make_app()
    release = asyncio.Event()

    @app.task(queue="pings")
    async def ping(msg: Ping) -> None:
        await release.wait()

    async with TestBroker(app, timeout=0.2) as broker:
        await broker.publish(Ping(n=1))
        with pytest.raises(TimeoutError, match="1 unacknowledged on pings"):
            await broker.join()
        release.set()
        await broker.join()
        assert [o.kind for o in broker.outcomes()] == ["ack"]


class Recording(Middleware):
    def __init__(self) -> None:
        self.before: list[int] = []

    async def before_process(self, ctx: ContextType) -> None:
        self.before.append(ctx.attempt)


async def test_the_worker_runs_the_apps_middleware_and_the_app_is_given_back() -> None:
    recording = Recording()
    app = make_app(middleware=[recording])

    @app.task(queue="pings")
    def ping(msg: Ping) -> int:  # a plain def: runs in the worker's threads
        return msg.n

    middleware = list(app.middleware)
    for _ in range(2):  # a second TestBroker on the same app starts afresh
        async with TestBroker(app) as broker:
            await broker.publish(Ping(n=3))
            await broker.join()
            assert [o.result for o in broker.outcomes()] == [3]
    assert recording.before == [1, 1]
    assert app.transport_factory is None
    assert app.middleware == middleware


async def test_results_use_an_in_memory_store_in_place_of_the_apps() -> None:
    app = make_app(results="redis://127.0.0.1:1/0")  # never connected to

    @app.task(queue="pings", results=True)
    async def ping(msg: Ping) -> int:
        return msg.n * 2

    async with TestBroker(app) as broker:
        message_id = await broker.publish(Ping(n=21))
        assert await app.result(message_id, timeout=5) == 42
        status = await app.status(message_id)
        assert status is not None and status.state == "succeeded"
    assert app._results_store is None


async def test_a_message_returned_too_often_is_a_dead_letter_with_the_brokers_reason() -> None:
    app = make_app(delivery_limit=1)  # the broker's own limit never goes below its floor

    @app.task(queue="pings")
    async def ping(msg: Ping) -> None:
        pass

    async with TestBroker(app, worker=False) as broker:
        await broker.publish(Ping(n=1))
        for _ in range(BROKER_DELIVERY_LIMIT_FLOOR + 1):
            async with app.transport.browse("pings") as browser:
                [delivery] = await browser.take()
                await delivery.nack(requeue=True)
        [letter] = broker.dead_letters("pings")
        assert (letter.reason, letter.error_type, letter.queue) == ("delivery_limit", None, "pings")
        with pytest.raises(BrokerError, match="unknown delivery tag"):
            await delivery.ack()


async def test_headers_amqp_cannot_carry_are_refused_as_on_the_wire() -> None:
    app = make_app()

    @app.task(queue="pings")
    async def ping(msg: Ping) -> None:
        pass

    async with TestBroker(app) as broker:
        with pytest.raises(HeaderError):
            await broker.publish(Ping(n=1), headers={"bad": object()})
        assert broker.published("pings") == []


async def test_auto_advance_lets_an_awaited_call_through_its_retries() -> None:
    app = make_app()

    @app.task(queue="pings", retry=RetryPolicy(max_attempts=3, backoff=[30]))
    async def ping(msg: Ping, ctx: Context) -> int:
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return ctx.attempt

    async with TestBroker(app, auto_advance=True) as broker:
        assert await broker.call(Ping(n=1), retry=True, timeout=5) == 3
        assert broker.now == 60.0


def test_the_readme_shows_the_example_test_as_it_is() -> None:
    root = Path(__file__).resolve().parents[2]
    section = (root / "README.md").read_text().split("## Testing your tasks")[1]
    shown = section.split("```python\n")[1].split("```")[0]
    example = (root / "examples" / "emails_reports" / "test_tasks.py").read_text()
    assert shown == example.split('"""', 2)[2].lstrip("\n")


async def test_a_message_whose_worker_dies_with_it_is_dead_lettered_as_worker_crashed() -> None:
    app = make_app(delivery_limit=2)
    started = asyncio.Event()
    runs: list[tuple[bool, int]] = []

    @app.task(queue="pings")
    async def ping(msg: Ping, ctx: Context) -> None:
        runs.append((ctx.redelivered, msg.n))
        started.set()
        await asyncio.Event().wait()  # until its process dies

    async with TestBroker(app) as broker:
        message_id = await broker.publish(Ping(n=1))
        for _ in range(3):  # beside others once, then alone until the limit
            await asyncio.wait_for(started.wait(), 5)
            started.clear()
            await broker.crash_worker()
        await eventually(lambda: len(broker.dead_letters("pings")) == 1, timeout=5)
        [letter] = broker.dead_letters("pings")
        assert letter.error_type == "WorkerCrashed"
        assert letter.message.message_id == message_id
        assert runs == [(False, 1), (False, 1), (False, 1)]
        assert [m.type for m in broker.messages("pings.suspect")] == []
        assert await publish(Ping(n=2))  # the module-level API acts on the app again
    async with TestBroker(app) as broker:  # and the app is as it was: it runs again
        await broker.publish(Ping(n=3))
        await asyncio.wait_for(started.wait(), 5)
    assert app._session is None and app._entered == 0


def test_the_fixture_says_so_when_the_app_fixture_is_not_defined(tmp_path: Path) -> None:
    (tmp_path / "test_forgot.py").write_text(
        "async def test_it(rabbitworker_broker):\n    pass\n", encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_forgot.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode != 0
    assert "define a `rabbitworker_app` fixture" in result.stdout + result.stderr


async def test_the_blocking_client_works_from_a_thread_against_the_test_broker() -> None:
    app = make_app()

    @app.task(queue="pings")
    async def ping(msg: Ping) -> int:
        return msg.n + 1

    async with TestBroker(app) as broker:
        message_id = await asyncio.to_thread(app.sync.publish, Ping(n=1))
        assert await asyncio.to_thread(app.sync.call, Ping(n=41), timeout=5) == 42
        await broker.join()
        assert broker.outcomes()[0].message_id == message_id
        assert [o.result for o in broker.outcomes()] == [2, 42]
