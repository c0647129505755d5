"""Handlers that hold on until told, for the shutdown and `--processes` tests run
as subprocesses."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from recording import name, record

from rabbitworker import App, Context, TaskMessage

if os.environ.get("RABBITWORKER_PROCESS") is not None and os.environ.get("RW_TEST_BREAK_CHILD"):
    # Only the supervisor's children fail, so it gets past its own checks.
    raise RuntimeError("this child is broken on purpose")

app = App("drain", exchange=name("x"))
RELEASE = Path(os.environ.get("RW_TEST_RELEASE", "/nonexistent"))


class Hold(TaskMessage, routing_key=name("hold")):
    """Runs for `seconds`, or until the release file exists when it is None."""

    n: int
    seconds: float | None = None


class HoldSync(TaskMessage, routing_key=name("hold-sync")):
    n: int


class Work(TaskMessage, routing_key=name("work")):
    n: int


@app.task(queue=name("q"))
async def hold(msg: Hold, ctx: Context) -> None:
    record("start", msg.n, ctx.message_id, os.getpid(), ctx.redelivered)
    if msg.seconds is not None:
        if not os.environ.get("RW_TEST_NO_WAIT"):
            await asyncio.sleep(msg.seconds)
    else:
        while not RELEASE.exists():
            await asyncio.sleep(0.02)
    record("done", msg.n, ctx.message_id, os.getpid(), ctx.redelivered)


@app.task(queue=name("q"))
def hold_sync(msg: HoldSync, ctx: Context) -> None:
    record("start", msg.n, ctx.message_id, os.getpid(), ctx.redelivered)
    while not RELEASE.exists():
        time.sleep(0.02)
    record("done", msg.n, ctx.message_id, os.getpid(), ctx.redelivered)


@app.task(queue=name("q"))
async def work(msg: Work, ctx: Context) -> None:
    await asyncio.sleep(0.02)
    record("work", msg.n, ctx.message_id, os.getpid(), ctx.redelivered)
