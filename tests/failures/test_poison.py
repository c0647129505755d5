"""Poison isolation: a message that kills its worker process ends in the dead-letter
queue as `WorkerCrashed`, and the messages that were in flight beside it when it
struck are handled, never dead-lettered for its crashes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from support import eventually, get_all, queue_depth, read_record

from rabbitworker import App, TaskMessage
from rabbitworker.topology import dead_letter_queue_name, suspect_queue_name


class Ping(TaskMessage, routing_key="ping"):
    n: int


ORDINARY = 200
POISON_AT = 7  # among the first prefetch window, so it strikes beside its neighbours


def runs(tmp_path: Path, kind: str) -> list[list[str]]:
    return [line for line in read_record(tmp_path) if line[0] == kind]


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_segfaulting_message_is_dead_lettered_and_its_200_neighbours_are_all_handled(
    queue_type: str,
    app_module: Any,
    worker_process: Any,
    amqp: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RW_TEST_QUEUE_TYPE", queue_type)
    m = app_module("poison")
    queue = m.name("jobs")
    dlq = dead_letter_queue_name(queue)
    async with m.app:
        jobs = [m.Job(n=n, poison=n == POISON_AT) for n in range(ORDINARY + 1)]
        ids = await asyncio.gather(*(m.app.publish(job) for job in jobs))
    poison_id = ids[POISON_AT]
    ordinary = {n for n in range(ORDINARY + 1) if n != POISON_AT}

    started = time.monotonic()
    supervisor = worker_process("--app", "poison:app", "--processes", "2", "--prefetch", "50")

    async def done() -> bool:
        handled = {int(line[1]) for line in runs(tmp_path, "handled")}
        return handled >= ordinary and await queue_depth(amqp, dlq) >= 1

    await eventually(done, timeout=50)
    took = time.monotonic() - started

    [letter] = await get_all(amqp, dlq)
    assert letter.message_id == poison_id
    assert letter.headers["x-error-type"] == "WorkerCrashed"
    assert "worker process died while this message ran alone" in str(
        letter.headers["x-error-message"]
    )
    # Once beside its neighbours, then alone delivery_limit (3) times.
    poisoned = runs(tmp_path, "poison")
    assert [line[2] for line in poisoned] == [poison_id] * 4
    assert len({line[3] for line in poisoned}) == 4  # four processes died
    assert {int(line[1]) for line in runs(tmp_path, "handled")} == ordinary
    assert await queue_depth(amqp, queue) == 0
    assert await queue_depth(amqp, suspect_queue_name(queue)) == 0
    # The supervisor may report the last death after the other process dead-lettered it.
    await eventually(lambda: supervisor.output.count("was killed by SIGSEGV; restarting") == 4)
    assert took < 45, f"took {took:.1f} s"


KILLERS = 6


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_message_whose_worker_died_before_its_ack_runs_again_but_is_never_dead_lettered(
    queue_type: str,
    app_module: Any,
    worker_process: Any,
    amqp: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RW_TEST_QUEUE_TYPE", queue_type)
    monkeypatch.setenv("RW_TEST_DELIVERY_LIMIT", "1")
    m = app_module("ack_kill")
    queue = m.name("jobs")
    count = 100
    killers = set(range(5, count, count // KILLERS))
    async with m.app:
        jobs = [m.Job(n=n, kill=n in killers) for n in range(count)]
        ids = await asyncio.gather(*(m.app.publish(job) for job in jobs))
    killer_ids = {ids[n] for n in killers}
    supervisor = worker_process("--app", "ack_kill:app", "--processes", "2", "--prefetch", "10")

    async def settled() -> bool:
        handled = {int(line[1]) for line in runs(tmp_path, "handled")}
        return (
            handled == set(range(count))
            and await queue_depth(amqp, queue) == 0
            and await queue_depth(amqp, suspect_queue_name(queue)) == 0
        )

    await eventually(settled, timeout=50)
    assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 0
    assert "WorkerCrashed" not in supervisor.output
    # Each killer that first ran on the work queue finished, took its process down
    # before its ack, and ran again. A killer still waiting, unrun, when another one
    # struck is moved to the suspect queue instead, and runs alone (where it does not
    # kill, or that death would be its own crash).
    killed = {line[1] for line in runs(tmp_path, "killed")}
    moved = {
        i for i in killer_ids if f"message {i} on {queue} was delivered again" in supervisor.output
    }
    assert killed <= killer_ids and len(killed) >= KILLERS // 2, killed
    assert killer_ids - killed <= moved
    handled_ids = [line[2] for line in runs(tmp_path, "handled")]
    assert all(handled_ids.count(i) >= 2 for i in killed)
    # The supervisor may report the last death after the other process ran its message.
    await eventually(
        lambda: supervisor.output.count("was killed by SIGKILL; restarting") == len(killed)
    )


@pytest.mark.parametrize(("delivery_limit", "broker_limit"), [(1, 20), (3, 20), (20, 20), (50, 50)])
def test_the_quorum_queues_own_delivery_limit_leaves_room_for_innocent_returns(
    delivery_limit: int, broker_limit: int
) -> None:
    # The broker counts every return, a neighbour's too, so its limit is only a
    # backstop above the worker's own crash count.
    app = App("limits", delivery_limit=delivery_limit)

    @app.task(queue="jobs")
    async def work(msg: Ping) -> None:
        pass

    queues = {spec.name: spec.arguments for spec in app.topology().queues}
    assert queues["jobs"]["x-delivery-limit"] == broker_limit
    assert queues[suspect_queue_name("jobs")]["x-delivery-limit"] == broker_limit
