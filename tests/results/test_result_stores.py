"""The results stores on their own, each against its real server (Redis, PostgreSQL)
and in memory: the newest status wins, readers wake on a final state without
polling, entries expire."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from rabbitworker.results import ResultStore, State, TaskStatus, open_store

STORES = ["memory", "redis", "postgres"]


@pytest.fixture(params=STORES)
async def store(
    request: pytest.FixtureRequest, redis_url: str, postgres_url: str
) -> AsyncIterator[ResultStore]:
    url = {"memory": "memory://", "redis": redis_url, "postgres": postgres_url}[request.param]
    opened = open_store(url)
    yield opened
    await opened.close()


def status(message_id: str, state: State, attempt: int = 1, **fields: object) -> TaskStatus:
    return TaskStatus(message_id=message_id, state=state, type="t.x", attempt=attempt, **fields)


async def test_a_saved_status_is_read_back_by_its_id(store: ResultStore) -> None:
    mid = uuid.uuid4().hex
    assert await store.load(mid) is None
    await store.save(status(mid, State.SUCCEEDED, result={"url": "/r/7.pdf"}), ttl=60)
    loaded = await store.load(mid)
    assert loaded is not None
    assert (loaded.state, loaded.result) == (State.SUCCEEDED, {"url": "/r/7.pdf"})


async def test_an_older_state_written_late_never_replaces_a_newer_one(store: ResultStore) -> None:
    mid = uuid.uuid4().hex
    await store.save(status(mid, State.STARTED, attempt=2), ttl=60)
    await store.save(status(mid, State.SUCCEEDED, attempt=2), ttl=60)
    await store.save(status(mid, State.STARTED, attempt=2), ttl=60)  # late, from a duplicate
    await store.save(status(mid, State.RETRYING, attempt=1), ttl=60)  # older attempt
    loaded = await store.load(mid)
    assert loaded is not None and loaded.state is State.SUCCEEDED
    await store.save(status(mid, State.STARTED, attempt=1, replays=1), ttl=60)  # a replay
    replayed = await store.load(mid)
    assert replayed is not None and replayed.state is State.STARTED


async def test_a_reader_waiting_for_a_result_wakes_within_fifty_ms_of_the_write(
    store: ResultStore,
) -> None:
    mid = uuid.uuid4().hex
    await store.save(status(mid, State.STARTED), ttl=60)
    waiting = asyncio.ensure_future(store.wait(mid, timeout=10))
    await asyncio.sleep(0.2)  # the reader is subscribed and waiting (not a synchronisation)
    assert not waiting.done()
    written = time.perf_counter()
    await store.save(status(mid, State.FAILED), ttl=60)
    result = await waiting
    woke_after = time.perf_counter() - written
    assert result is not None and result.state is State.FAILED
    assert woke_after < 0.05, f"woke {woke_after * 1000:.1f} ms after the write"


async def test_wait_returns_what_is_stored_at_its_timeout(store: ResultStore) -> None:
    mid = uuid.uuid4().hex
    await store.save(status(mid, State.STARTED), ttl=60)
    started = time.perf_counter()
    result = await store.wait(mid, timeout=0.3)
    assert result is not None and result.state is State.STARTED
    assert 0.3 <= time.perf_counter() - started < 1.0


async def test_an_entry_is_gone_after_its_ttl(store: ResultStore) -> None:
    mid = uuid.uuid4().hex
    await store.save(status(mid, State.SUCCEEDED), ttl=0.3)
    assert await store.load(mid) is not None
    deadline = time.monotonic() + 5
    while await store.load(mid) is not None:
        assert time.monotonic() < deadline, "the entry outlived its ttl"
        await asyncio.sleep(0.05)


async def test_redis_writes_queued_statuses_in_order_leaving_out_replaced_ones(
    redis_url: str,
) -> None:
    from rabbitworker.results.redis import RedisResultStore
    from rabbitworker.results.store import SaveQueue

    store = open_store(redis_url)
    assert isinstance(store, RedisResultStore) and isinstance(store, SaveQueue)
    sent: list[list[str]] = []
    script_args = store._script_args

    def recording(batch: list[tuple[TaskStatus, float]]) -> tuple[list[str], list[object]]:
        sent.append([s.state.value for s, _ in batch])
        return script_args(batch)

    store._script_args = recording  # type: ignore[method-assign]
    try:
        ok, late, replay = (uuid.uuid4().hex for _ in range(3))
        waiting = asyncio.ensure_future(store.wait(ok, timeout=10))
        await asyncio.sleep(0.1)  # the reader subscribes (not a synchronisation)
        # One turn of the loop: a started then its final state; a final state then a
        # late started; a final state then a replay's started (newer: kept).
        started = store.enqueue(status(ok, State.STARTED), ttl=60)
        finals = [
            store.enqueue(status(ok, State.SUCCEEDED, result=7), ttl=60),
            store.enqueue(status(late, State.FAILED), ttl=60),
            store.enqueue(status(late, State.STARTED), ttl=60),
            store.enqueue(status(replay, State.FAILED), ttl=60),
            store.enqueue(status(replay, State.STARTED, replays=1), ttl=60),
        ]
        await asyncio.gather(started, *finals)
        assert sent[-1] == ["succeeded", "failed", "failed", "started"]
        woke = await asyncio.wait_for(waiting, 1)
        assert woke is not None and (woke.state, woke.result) == (State.SUCCEEDED, 7)
        states = [await store.load(mid) for mid in (ok, late, replay)]
        assert [s.state if s else None for s in states] == [
            State.SUCCEEDED,
            State.FAILED,
            State.STARTED,
        ]
    finally:
        await store.close()
