"""Helpers for the failure tests: import an app module of tests/apps in the test
process under the test's prefix (so the test and the worker subprocesses it starts
agree on names), and run the `rabbitworker` CLI as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

APPS = Path(__file__).resolve().parent
ROOT = APPS.parent.parent


@contextlib.asynccontextmanager
async def app_module(
    name: str, *, prefix: str, record: Path, broker_url: str
) -> AsyncIterator[ModuleType]:
    """Import tests/apps/<name>.py fresh with the test's prefix; delete its topology after."""
    from support import delete_topology

    saved = {k: os.environ.get(k) for k in ("RW_TEST_PREFIX", "RW_TEST_RECORD")}
    os.environ.update(RW_TEST_PREFIX=prefix, RW_TEST_RECORD=str(record))
    for mod in (name, "recording"):
        sys.modules.pop(mod, None)
    try:
        module = importlib.import_module(name)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    app = module.app
    app.configure(url=broker_url)
    try:
        yield module
    finally:
        await app.close()
        await delete_topology(broker_url, app.exchange, app.queues)
        for mod in (name, "recording"):
            sys.modules.pop(mod, None)


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


async def run_cli(*args: str, broker_url: str, prefix: str, record: Path) -> CliResult:
    """`python -m rabbitworker ARGS` from tests/apps, without blocking the event loop."""
    env = {
        **os.environ,
        "RABBITWORKER_URL": broker_url,
        "RW_TEST_PREFIX": prefix,
        "RW_TEST_RECORD": str(record),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rabbitworker",
        *args,
        cwd=str(APPS),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
