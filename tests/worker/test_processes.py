"""`rabbitworker run --processes N`: a supervisor keeps N workers consuming, restarts
one that dies, drains them all on SIGTERM, and gives up on children that cannot start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

from support import WorkerProcess, eventually, queue_depth, read_record


def child_pids(supervisor: WorkerProcess) -> list[int]:
    """Pids of the children the supervisor started, in order."""
    return [int(pid) for pid in re.findall(r"worker \d+ started, pid (\d+)", supervisor.output)]


def consuming(supervisor: WorkerProcess) -> int:
    return supervisor.output.count("worker consuming")


async def test_two_processes_both_consume_and_a_killed_one_is_restarted_without_losing_work(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("drain")
    queue = m.name("q")
    supervisor = worker_process(
        "--app", "drain:app", "--processes", "2", "--prefetch", "5", "--concurrency", "5"
    )
    await eventually(lambda: consuming(supervisor) == 2, timeout=30)
    first_pids = child_pids(supervisor)
    assert len(first_pids) == 2
    async with m.app:
        published = {await m.app.publish(m.Work(n=i)) for i in range(200)}
        # Both children take part.
        await eventually(lambda: {line[3] for line in read_record(tmp_path)} >= {
            str(pid) for pid in first_pids
        }, timeout=30)  # fmt: skip

        victim = first_pids[1]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(child_pids(supervisor)) == 3, timeout=30)
        await eventually(lambda: consuming(supervisor) == 3, timeout=30)
        replacement = child_pids(supervisor)[2]
        assert replacement not in first_pids
        assert f"pid {victim}) was killed by SIGKILL" in supervisor.output

        published |= {await m.app.publish(m.Work(n=i)) for i in range(200, 400)}
        await eventually(
            lambda: {line[2] for line in read_record(tmp_path)} >= published, timeout=60
        )
    handled_by = {line[3] for line in read_record(tmp_path)}
    assert str(replacement) in handled_by
    assert await queue_depth(amqp, queue) == 0

    supervisor.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.proc.wait, 60) == 0


async def test_sigterm_on_the_supervisor_drains_every_worker_and_exits_zero(
    app_module: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = app_module("drain")
    queue = m.name("q")
    release = tmp_path / "release"
    supervisor = worker_process(
        "--app", "drain:app", "--processes", "2", "--prefetch", "2", "--concurrency", "2",
        "--grace", "30", env={"RW_TEST_RELEASE": str(release)},
    )  # fmt: skip
    await eventually(lambda: consuming(supervisor) == 2, timeout=30)
    async with m.app:
        for i in range(4):
            await m.app.publish(m.Hold(n=i))

    def started() -> list[list[str]]:
        return [line for line in read_record(tmp_path) if line[0] == "start"]

    # Prefetch 2 per process: each child holds two of the four.
    await eventually(lambda: len(started()) == 4, timeout=30)
    assert len({line[3] for line in started()}) == 2

    supervisor.proc.send_signal(signal.SIGTERM)
    await eventually(lambda: supervisor.output.count("SIGTERM received: draining") == 2)
    assert supervisor.proc.poll() is None  # the handlers are still working
    release.touch()

    assert await asyncio.to_thread(supervisor.proc.wait, 30) == 0
    done = [line for line in read_record(tmp_path) if line[0] == "done"]
    assert {line[2] for line in done} == {line[2] for line in started()}
    assert supervisor.output.count("worker stopped: 2 in flight finished") == 2
    assert "restarting" not in supervisor.output
    assert await queue_depth(amqp, queue) == 0


def test_a_child_that_cannot_start_is_not_restarted_forever(
    app_module: Any, worker_process: Any
) -> None:
    app_module("drain")
    supervisor = worker_process(
        "--app", "drain:app", "--processes", "2", env={"RW_TEST_BREAK_CHILD": "1"}
    )
    assert supervisor.proc.wait(60) == 2
    assert "could not start 3 times in a row" in supervisor.output
    assert "this child is broken on purpose" in supervisor.output
    assert "worker consuming" not in supervisor.output


def test_a_bad_queue_name_fails_once_before_any_process_starts(worker_process: Any) -> None:
    supervisor = worker_process("--app", "drain:app", "--processes", "2", "--queues", "nope")
    assert supervisor.proc.wait(30) == 2
    assert "unknown queue(s) nope" in supervisor.output
    assert "started, pid" not in supervisor.output
