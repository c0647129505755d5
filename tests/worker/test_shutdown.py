"""Graceful shutdown of `rabbitworker run`: SIGTERM drains running handlers, hands
back what never started or did not finish in time, and a second SIGINT cuts it short."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from support import WorkerProcess, eventually, get_all, queue_depth, read_record


def lines(tmp_path: Path, kind: str) -> list[list[str]]:
    """Record lines of one kind: [kind, n, message_id, pid, redelivered]."""
    return [line for line in read_record(tmp_path) if line[0] == kind]


async def exit_code(worker: WorkerProcess, timeout: float) -> int:
    """Wait for the process to exit; fails the test if it outlives `timeout`."""
    return await asyncio.to_thread(worker.proc.wait, timeout)


def depth_is(amqp: Any, queue: str, expected: int) -> Any:
    """A predicate for `eventually`: the queue holds `expected` ready messages."""

    async def check() -> bool:
        return await queue_depth(amqp, queue) == expected

    return check


async def test_sigterm_lets_the_twenty_running_handlers_finish_and_starts_nothing_new(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("drain")
    queue = m.name("q")
    release = tmp_path / "release"
    async with m.app:
        published = [await m.app.publish(m.Hold(n=i)) for i in range(30)]
    worker = worker_process(
        "--app", "drain:app", "--concurrency", "20", "--grace", "30",
        env={"RW_TEST_RELEASE": str(release)},
    )  # fmt: skip
    await eventually(lambda: len(lines(tmp_path, "start")) == 20, timeout=30)

    worker.proc.send_signal(signal.SIGTERM)
    # The ten deliveries waiting for a slot go back to the queue at once, while the
    # twenty handlers are still running.
    await eventually(depth_is(amqp, queue, 10), timeout=15)
    assert lines(tmp_path, "done") == []
    release.touch()

    assert await exit_code(worker, timeout=30) == 0
    started = {line[2] for line in lines(tmp_path, "start")}
    assert len(lines(tmp_path, "start")) == 20
    assert {line[2] for line in lines(tmp_path, "done")} == started
    assert "SIGTERM received: draining" in worker.output
    assert (
        "worker stopped: 20 in flight finished, 10 handed back to the broker "
        "(10 not started, 0 interrupted)" in worker.output
    )
    # All twenty were acked; the ten left are exactly the ones that never started.
    left = await get_all(amqp, queue)
    assert {message.message_id for message in left} == set(published) - started
    assert len(left) == 10


async def test_handlers_still_running_at_the_grace_deadline_are_handed_to_the_next_worker(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("drain")
    queue = m.name("q")
    async with m.app:
        published = {await m.app.publish(m.Hold(n=i, seconds=5)) for i in range(3)}
    first = worker_process("--app", "drain:app", "--grace", "1")
    await eventually(lambda: len(lines(tmp_path, "start")) == 3, timeout=30)

    first.proc.send_signal(signal.SIGTERM)
    assert await exit_code(first, timeout=20) == 0
    assert lines(tmp_path, "done") == []
    for message_id in published:
        assert f"message {message_id} on {queue} did not finish in time" in first.output
    assert "3 handed back to the broker (0 not started, 3 interrupted)" in first.output
    await eventually(depth_is(amqp, queue, 3), timeout=15)

    second = worker_process("--app", "drain:app", env={"RW_TEST_NO_WAIT": "1"})
    await eventually(lambda: len(lines(tmp_path, "done")) == 3, timeout=30)
    assert second.stop() == 0
    done = lines(tmp_path, "done")
    assert {line[2] for line in done} == published
    # Handed back as fresh copies (then acked), so the next worker does not take
    # them for crash suspects: they are not marked redelivered.
    assert all(line[4] == "False" for line in done)
    assert {line[3] for line in done} == {str(second.proc.pid)}
    assert await queue_depth(amqp, queue) == 0


async def test_a_sync_handler_past_the_grace_period_does_not_hold_the_process_open(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("drain")
    queue = m.name("q")
    async with m.app:
        message_id = await m.app.publish(m.HoldSync(n=1))
    # No release file: the handler's thread would block forever.
    worker = worker_process("--app", "drain:app", "--grace", "1")
    await eventually(lambda: len(lines(tmp_path, "start")) == 1, timeout=30)

    worker.proc.send_signal(signal.SIGTERM)
    assert await exit_code(worker, timeout=20) == 0
    assert f"message {message_id} on {queue} did not finish in time" in worker.output
    assert "1 sync handler(s) still running in threads" in worker.output
    await eventually(depth_is(amqp, queue, 1), timeout=15)
    assert lines(tmp_path, "done") == []


async def test_a_second_sigint_stops_at_once_and_hands_every_message_back(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("drain")
    queue = m.name("q")
    async with m.app:
        for i in range(2):
            await m.app.publish(m.Hold(n=i))
    # The grace period is far longer than this test waits for the exit.
    worker = worker_process("--app", "drain:app", "--grace", "600")
    await eventually(lambda: len(lines(tmp_path, "start")) == 2, timeout=30)

    worker.proc.send_signal(signal.SIGINT)
    await eventually(lambda: "SIGINT received: draining" in worker.output, timeout=15)
    assert worker.proc.poll() is None  # still draining: the handlers never finish
    worker.proc.send_signal(signal.SIGINT)

    assert await exit_code(worker, timeout=30) == 130
    assert "second SIGINT: stopping now" in worker.output
    assert "2 handed back to the broker (0 not started, 2 interrupted)" in worker.output
    await eventually(depth_is(amqp, queue, 2), timeout=15)
    assert lines(tmp_path, "done") == []
