"""An app for the operations tests: a job that succeeds, retries once, is
rejected, or waits for the file `<RW_TEST_RECORD>.go` (to hold a handler running)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from recording import RECORD, name, record

from rabbitworker import App, Context, Reject, Retry, RetryPolicy, TaskMessage

app = App("ops", exchange=name("x"))
GO = Path(f"{RECORD}.go")


class Job(TaskMessage, routing_key=name("job")):
    n: int
    kind: str = "ok"  # ok, retry-once, reject, wait
    note: str = ""


@app.task(queue=name("jobs"), retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
async def run_job(msg: Job, ctx: Context) -> None:
    record("start", msg.n, ctx.attempt, os.getpid())
    if msg.kind == "retry-once" and ctx.attempt == 1:
        raise Retry()
    if msg.kind == "reject":
        raise Reject("rejected on purpose")
    if msg.kind == "slow":
        await asyncio.sleep(0.05)  # the work itself, so that both processes get some
    while msg.kind == "wait" and not GO.exists():
        await asyncio.sleep(0.02)
    record("done", msg.n, ctx.attempt, os.getpid())
