"""Helpers for the dashboard tests: run `rabbitworker dashboard` as a subprocess on
a free loopback port, and find the Chromium the browser test drives."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import uvicorn

from rabbitworker import App, TaskMessage
from rabbitworker.dashboard import create_dashboard
from rabbitworker.topology import dead_letter_queue_name
from support import APPS, ROOT, unavailable

__all__ = [
    "DashboardProcess",
    "board_app",
    "chromium",
    "csrf_token",
    "dashboard_client",
    "free_port",
    "keep_logging",
    "put_dead_letters",
    "start_dashboard",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class DashboardProcess:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, *, auth: tuple[str, str] | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"dashboard exited {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.base}/api/status", auth=auth, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not answer:\n{self.output}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_dashboard(
    broker_url: str, prefix: str, tmp_path: Path
) -> Iterator[Callable[..., DashboardProcess]]:
    """Factory: `start_dashboard(*args, env=...)` runs `rabbitworker dashboard ARGS`
    from tests/apps on a free port and waits until it answers."""
    running: list[DashboardProcess] = []

    def factory(
        *args: str, env: dict[str, str] | None = None, auth: tuple[str, str] | None = None
    ) -> DashboardProcess:
        port = free_port()
        full_env = {
            **os.environ,
            "RABBITWORKER_URL": broker_url,
            "RW_TEST_PREFIX": prefix,
            "RW_TEST_RECORD": str(tmp_path / "handled.txt"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
            **(env or {}),
        }
        log = tmp_path / f"dashboard{len(running)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rabbitworker", "dashboard", "--port", str(port), *args],
                env=full_env,
                cwd=str(APPS),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        board = DashboardProcess(proc, f"http://127.0.0.1:{port}", log)
        running.append(board)
        board.wait_ready(auth=auth)
        return board

    yield factory
    for board in running:
        board.stop()


def chromium() -> str:
    """The headless browser's path: Debian's `chromium` package (`.ci/run` installs
    it). Missing on CI is a failure; elsewhere the test is skipped, saying why."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    unavailable("no Chromium for the browser test: apt-get install -y chromium")


@contextlib.contextmanager
def dashboard_client(app: App, **options: Any) -> Iterator[httpx.Client]:
    """The dashboard of `app` served by uvicorn in this process (its own event loop,
    in a thread), and a client for it that does not follow redirects."""
    port = free_port()
    config = uvicorn.Config(
        create_dashboard(app, **options), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the dashboard did not start"
        assert time.monotonic() < deadline, "the dashboard did not start within 30 s"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


def board_app(make_app: Callable[..., App], prefix: str) -> tuple[App, str]:
    """An app with one queue (`<prefix>.jobs`) and a handler that does nothing."""
    app = make_app("board")

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=f"{prefix}.jobs")
    async def job(msg: Job) -> None:
        pass

    return app, f"{prefix}.jobs"


async def put_dead_letters(amqp: Any, queue: str, *ids: str, type: str = "job") -> None:
    """Dead letters straight into `queue`'s dead-letter queue, as a worker leaves them."""
    channel = await amqp.channel()
    for n, message_id in enumerate(ids):
        body = f'{{"n": {n}}}'.encode()
        headers: dict[str, Any] = {
            "x-error-type": "ValueError",
            "x-error-message": f"job {n} failed",
        }
        message = aio_pika.Message(body, message_id=message_id, type=type, headers=headers)
        await channel.default_exchange.publish(message, dead_letter_queue_name(queue))
    await channel.close()


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """Restore the logging set-up after a test that runs a CLI command in this process
    (commands install their own root handler and levels)."""
    names = ("", "aio_pika", "aiormq")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    handlers = logging.getLogger().handlers[:]
    yield
    logging.getLogger().handlers[:] = handlers
    for logger, level in saved:
        logger.setLevel(level)
