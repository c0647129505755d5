"""What the tests share besides fixtures: where things are, waiting with a deadline,
reading queues, worker subprocesses, and deleting what a test declared."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import aio_pika
import pytest

from rabbitworker import App
from rabbitworker.topology import delay_queue_name, retry_queue_name, suspect_queue_name

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"


async def delete_topology(url: str, exchange: str, queues: list[str]) -> None:
    """Delete an app's exchanges and queues, including expiring retry/delay ones."""
    connection = await aio_pika.connect(url)
    try:
        names: list[str] = []
        for q in queues:
            names += [q, f"{q}.dlq", suspect_queue_name(q)]
            names += [retry_queue_name(q, ms) for ms in _known_delays()]
        names += [delay_queue_name(exchange, ms) for ms in _known_delays()]
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
        for ex in (exchange, f"{exchange}.retry", f"{exchange}.dlx", f"{exchange}.delay"):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(ex)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


_DELAYS: set[int] = set()


def _known_delays() -> set[int]:
    return _DELAYS


def remember_delay(ms: int) -> None:
    _DELAYS.add(ms)


def remember_app_delays(app: App) -> None:
    """Note the retry delays of an app's tasks, so their retry queues get deleted."""
    for tasks in app.registry.tasks.values():
        for task in tasks.values():
            _DELAYS.update(task.retry.steps_ms())


def unavailable(message: str) -> NoReturn:
    """A tool or service a test needs is missing: a failure on CI (CI=true), where
    `.ci/run` provides everything; elsewhere the test is skipped, saying why."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `predicate` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def queue_depth(connection: aio_pika.abc.AbstractConnection, name: str) -> int:
    """Messages ready in a queue (not counting unacknowledged ones), by passive declare."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def get_all(
    connection: aio_pika.abc.AbstractConnection, name: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message ready in a queue."""
    channel = await connection.channel()
    out = []
    try:
        queue = await channel.declare_queue(name, passive=True)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
    finally:
        await channel.close()
    return out


class WorkerProcess:
    """`rabbitworker run` as a subprocess, with its output captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rabbitworker", *args],
            env=env,
            cwd=str(APPS),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_consuming(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while "worker consuming" not in self.output:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.output}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def read_record(tmp_path: Path) -> list[list[str]]:
    """The lines handlers in tests/apps wrote to RW_TEST_RECORD, split on spaces."""
    path = tmp_path / "handled.txt"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]
