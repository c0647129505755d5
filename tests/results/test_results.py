"""The results backend end to end, over Redis, PostgreSQL and the in-memory store:
the states a reader sees and their order, reading from another process, how fast a
waiting reader hears of the result, expiry, and a store that goes away."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from support import ROOT, eventually
from support.proxy import Proxy

from rabbitworker import App, Context, Reject, RemoteError, RetryPolicy, RPCTimeout, TaskMessage
from rabbitworker.results import ResultStore, State, TaskStatus, open_store

APPS = ROOT / "tests" / "apps"


class Recording:
    """A store that records every status saved through it, with when."""

    def __init__(self, inner: ResultStore) -> None:
        self.inner = inner
        self.saved: list[tuple[float, TaskStatus]] = []

    async def save(self, status: TaskStatus, ttl: float) -> None:
        await self.inner.save(status, ttl)
        self.saved.append((time.perf_counter(), status))

    async def load(self, message_id: str) -> TaskStatus | None:
        return await self.inner.load(message_id)

    async def wait(self, message_id: str, timeout: float) -> TaskStatus | None:
        return await self.inner.wait(message_id, timeout)

    async def close(self) -> None:
        await self.inner.close()

    def states(self, message_id: str) -> list[tuple[str, int]]:
        return [(s.state.value, s.attempt) for _, s in self.saved if s.message_id == message_id]


@pytest.fixture(params=["memory", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, redis_url: str, postgres_url: str) -> str:
    return {"memory": "memory://", "redis": redis_url, "postgres": postgres_url}[request.param]


class Report(BaseModel):
    url: str


@pytest.fixture
async def tracked(
    make_app: Callable[..., App], start_worker: Any, prefix: str, store_url: str
) -> AsyncIterator[tuple[App, Recording, type[TaskMessage[Report]]]]:
    """An app whose render task keeps results, its worker running, and the store."""
    store = Recording(open_store(store_url))
    app = make_app(results=store)
    failures: dict[int, int] = {}

    class Render(TaskMessage[Report], routing_key=f"{prefix}.render"):
        report_id: int
        fail_times: int = 0
        reject: bool = False

    @app.task(
        queue=f"{prefix}.reports",
        results=True,
        retry=RetryPolicy(max_attempts=3, backoff=[0.05]),
    )
    async def render(msg: Render, ctx: Context) -> Report:
        if msg.reject:
            raise Reject("this report cannot be made")
        if failures.get(msg.report_id, 0) < msg.fail_times:
            failures[msg.report_id] = failures.get(msg.report_id, 0) + 1
            raise ConnectionError("the database blinked")
        return Report(url=f"/reports/{msg.report_id}.pdf")

    await start_worker(app)
    async with app:
        yield app, store, Render


async def test_success_retry_and_dead_letter_follow_the_documented_order(tracked: Any) -> None:
    app, store, Render = tracked
    ok = await app.publish(Render(report_id=1))
    flaky = await app.publish(Render(report_id=2, fail_times=1))
    bad = await app.publish(Render(report_id=3, reject=True))

    assert await app.result(ok, timeout=10) == Report(url="/reports/1.pdf")
    assert await app.result(flaky, timeout=10) == Report(url="/reports/2.pdf")
    with pytest.raises(RemoteError) as failed:
        await app.result(bad, timeout=10)
    assert (failed.value.remote_type, failed.value.remote_message) == (
        "Reject",
        "this report cannot be made",
    )
    assert store.states(ok) == [("queued", 1), ("started", 1), ("succeeded", 1)]
    assert store.states(flaky) == [
        ("queued", 1),
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("succeeded", 2),
    ]
    assert store.states(bad) == [("queued", 1), ("started", 1), ("failed", 1)]
    for message_id in (ok, flaky, bad):
        final = await app.status(message_id)
        assert final is not None and final.state.final
        assert final.worker is not None and final.worker.pid == os.getpid()
        assert final.published_at and final.started_at and final.finished_at
        assert final.published_at <= final.started_at <= final.finished_at
        times = [s.started_at for _, s in store.saved if s.message_id == message_id]
        started = [t for t in times if t is not None]
        assert started == sorted(started)
    retrying = next(
        s for _, s in store.saved if s.message_id == flaky and s.state is State.RETRYING
    )
    assert retrying.error is not None and retrying.error.type == "ConnectionError"
    assert retrying.next_attempt_at is not None and retrying.finished_at is None


async def test_a_waiting_reader_has_the_result_within_fifty_ms_of_the_worker_writing_it(
    tracked: Any,
) -> None:
    app, store, Render = tracked
    message_id = await app.publish(Render(report_id=9))
    await app.result(message_id, timeout=10)  # warm: the store's subscription is open
    slow = await app.publish(Render(report_id=10, fail_times=1))
    reading = asyncio.ensure_future(app.result(slow, timeout=10))
    assert await reading == Report(url="/reports/10.pdf")
    returned = time.perf_counter()
    written = next(t for t, s in store.saved if s.message_id == slow and s.state.final)
    assert returned - written < 0.05, f"{(returned - written) * 1000:.1f} ms after the write"


async def test_result_raises_rpc_timeout_for_an_unknown_id_and_a_message_still_running(
    tracked: Any,
) -> None:
    app, _, _ = tracked
    with pytest.raises(RPCTimeout, match="no status"):
        await app.result("never-published", timeout=0.2)
    assert await app.status("never-published") is None


async def test_a_separate_process_reads_the_result_by_id(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    redis_url: str,
    postgres_url: str,
    broker_url: str,
) -> None:
    for url in (redis_url, postgres_url):
        app = make_app(results=url, exchange=f"{prefix}.{url.split(':')[0]}.x")

        class Ping(TaskMessage[Report], routing_key=f"{prefix}.{url.split(':')[0]}.ping"):
            n: int

        @app.task(queue=f"{prefix}.{url.split(':')[0]}.pings")
        async def ping(msg: Ping) -> Report:
            return Report(url=f"/ping/{msg.n}")

        await start_worker(app)
        async with app:
            message_id = await app.publish(Ping(n=5), track=True)
            await app.status(message_id, wait=10)
        reader = _reader_script(app.exchange, url, broker_url, message_id)
        out = subprocess.run(
            [sys.executable, "-c", reader], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout)
        assert status["state"] == "succeeded"
        assert status["result"] == {"url": "/ping/5"}
        assert status["worker"]["pid"] == os.getpid() != int(out.stderr.strip())


def _reader_script(exchange: str, results: str, broker: str, message_id: str) -> str:
    """A program that knows nothing but the ids and URLs: another process's view."""
    return (
        "import asyncio, os, sys\n"
        "from rabbitworker import App\n"
        f"app = App('reader', url={broker!r}, exchange={exchange!r}, results={results!r})\n"
        "async def main():\n"
        "    async with app:\n"
        f"        status = await app.status({message_id!r}, wait=10)\n"
        "        print(status.model_dump_json())\n"
        "    print(os.getpid(), file=sys.stderr)\n"
        "asyncio.run(main())\n"
    )


async def test_an_entry_expires_after_its_tasks_ttl(
    make_app: Callable[..., App], start_worker: Any, prefix: str, redis_url: str
) -> None:
    app = make_app(results=redis_url)

    class Brief(TaskMessage, routing_key=f"{prefix}.brief"):
        n: int

    @app.task(queue=f"{prefix}.briefs", results=timedelta(seconds=1))
    async def brief(msg: Brief) -> int:
        return msg.n

    await start_worker(app)
    async with app:
        message_id = await app.publish(Brief(n=3))
        assert await app.result(message_id, timeout=10) == 3

        async def expired() -> bool:
            return await app.status(message_id) is None

        await eventually(expired, timeout=5)


async def test_a_store_that_goes_away_loses_no_message_and_the_worker_keeps_going(
    make_app: Callable[..., App], start_worker: Any, prefix: str, redis_url: str, amqp: Any
) -> None:
    async with Proxy.to(redis_url) as redis_proxy:
        app = make_app(results=redis_proxy.url(redis_url))
        handled: list[int] = []

        class Job(TaskMessage, routing_key=f"{prefix}.job"):
            n: int

        @app.task(queue=f"{prefix}.jobs", results=True)
        async def job(msg: Job) -> int:
            handled.append(msg.n)
            return msg.n

        worker = await start_worker(app)
        async with app:
            before = await app.publish(Job(n=0))
            assert await app.result(before, timeout=10) == 0
            redis_proxy.cut(down="refuse")
            during = [await app.publish(Job(n=n)) for n in range(1, 11)]
            await eventually(lambda: sorted(handled) == list(range(11)), timeout=30)
            await redis_proxy.restore()
            # What a reader sees for a message handled while the store was away: the
            # last status that could be saved (writes are tried again for about a
            # second, then given up): none at all here, or a true one.
            seen = [await app.status(m) for m in during]
            assert None in seen
            for message_id, status in zip(during, seen, strict=True):
                assert status is None or status.message_id == message_id
            after = await app.publish(Job(n=11))
            assert await app.result(after, timeout=10) == 11
        assert worker.stats().consuming
        # The final status is saved before the ack, so the count may trail the result.
        await eventually(lambda: worker.stats().handled == 12)
