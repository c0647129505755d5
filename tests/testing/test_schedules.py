"""Schedules under TestBroker: the app's real beat publishes each tick when virtual
time reaches it, `join()` never runs the clock for ticks alone, and a beat whose
connection went with a crashed worker leads again from the last tick it kept on
the broker. (The beat against RabbitMQ: tests/schedules/test_beat.py.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from rabbitworker import App, RetryPolicy, TaskMessage
from rabbitworker.dashboard.schedules import read_schedules
from rabbitworker.testing import TestBroker
from rabbitworker.topology import beat_leader_queue_name

NOON = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class Tick(TaskMessage, routing_key="ticks.tick"):
    pass


class Job(TaskMessage, routing_key="jobs.job"):
    pass


def minutely_app(handled: list[datetime]) -> App:
    app = App("schedules")

    @app.task(queue="ticks")
    async def tick(msg: Tick) -> None:
        handled.append(NOON)

    app.schedule(Tick(), every=timedelta(minutes=1), name="minutely")
    return app


def tick_ids(broker: TestBroker) -> list[str]:
    return [m.message_id for m in broker.published("ticks")]


async def test_a_schedule_fires_on_the_virtual_clock_three_minutely_ticks_in_under_a_second() -> (
    None
):
    handled: list[datetime] = []
    app = minutely_app(handled)
    started = time.perf_counter()
    async with TestBroker(app, start=NOON + timedelta(seconds=30)) as broker:
        await broker.advance(149)  # to 12:02:59: two ticks
        assert tick_ids(broker) == [
            "schedule:minutely:2026-05-01T12:01:00Z",
            "schedule:minutely:2026-05-01T12:02:00Z",
        ]
        await broker.advance(31)  # to 12:03:30: the third
        assert len(handled) == 3 and broker.now == 180
        assert tick_ids(broker)[-1] == "schedule:minutely:2026-05-01T12:03:00Z"
        assert [o.kind for o in broker.outcomes()] == ["ack", "ack", "ack"]
        assert broker.beat is not None and broker.beat.published == 3
        # The dashboard sees the leadership through the same transport protocol.
        board = await read_schedules(app)
        assert board.leader == "held" and board.kept == {"minutely": 1}
    wall = time.perf_counter() - started
    print(f"\nthree minutely ticks on the virtual clock: {wall * 1000:.1f} ms of wall time")
    assert wall < 1.0
    # Left: the lock went with the broker's connection.
    assert broker.broker.locks.probe(beat_leader_queue_name(app.exchange)) == "free"


async def test_join_does_not_run_the_clock_for_ticks_but_fires_those_it_passes() -> None:
    handled: list[datetime] = []
    app = minutely_app(handled)
    attempts: list[float] = []

    @app.task(queue="jobs", retry=RetryPolicy(max_attempts=2, backoff=[150]))
    async def job(msg: Job) -> None:
        attempts.append(broker.now)
        if len(attempts) == 1:
            raise RuntimeError("once")

    async with TestBroker(app, start=NOON) as broker:
        await broker.join()  # nothing waits: the clock stays
        assert broker.now == 0 and tick_ids(broker) == []
        await broker.publish(Job())
        await broker.join()  # to the retry at 150 s, by the ticks at 60 s and 120 s
        assert attempts == [0, 150]
        assert tick_ids(broker) == [
            "schedule:minutely:2026-05-01T12:01:00Z",
            "schedule:minutely:2026-05-01T12:02:00Z",
        ]
        assert [o.at for o in broker.outcomes() if o.queue == "ticks"] == [60, 120]


async def test_a_beat_that_lost_its_connection_leads_again_from_the_last_tick_kept() -> None:
    app = App("schedules")

    @app.task(queue="ticks")
    async def tick(msg: Tick) -> None:
        pass

    app.schedule(Tick(), every=timedelta(seconds=1), name="secondly")
    async with TestBroker(app, start=NOON) as broker:
        await broker.advance(3)
        assert len(tick_ids(broker)) == 3
        # The app's connection, and the beat's lock with it, go; the beat tries again
        # a (virtual) second later, when the tick of 12:00:04 is due. Only the last
        # tick kept on the broker (12:00:03) tells it that this one is still to come.
        await broker.crash_worker()
        await broker.advance(3)
        assert tick_ids(broker) == [
            f"schedule:secondly:2026-05-01T12:00:{second:02d}Z" for second in range(1, 7)
        ]


async def test_beat_false_leaves_the_schedules_alone() -> None:
    handled: list[datetime] = []
    app = minutely_app(handled)
    async with TestBroker(app, beat=False) as broker:
        await broker.advance(600)
        assert broker.beat is None and tick_ids(broker) == []
