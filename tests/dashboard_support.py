"""Helpers for the dashboard tests: run `rabbitworker dashboard` as a subprocess on
a free loopback port, and find the Chromium the browser test drives."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import APPS, ROOT

__all__ = ["DashboardProcess", "chromium", "free_port", "start_dashboard"]


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
    message = "no Chromium for the browser test: apt-get install -y chromium"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
