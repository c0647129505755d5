"""An app for the operations tests (`rabbitworker status`, the dashboard): a job
succeeds, fails into its 60 s retry queue, or is rejected into the dead-letter
queue; a "broken" job is rejected until the file `<RW_TEST_RECORD>.fixed` exists."""

from __future__ import annotations

import os
from pathlib import Path

from recording import RECORD, name, record

from rabbitworker import App, Context, Reject, RetryPolicy, TaskMessage

RESULTS = os.environ.get("RW_TEST_RESULTS") or None
app = App("ops-console", exchange=name("x"), results=RESULTS)
FIXED = Path(f"{RECORD}.fixed")


class Job(TaskMessage, routing_key=name("job")):
    n: int
    outcome: str = "ok"  # ok | retry | reject | broken


@app.task(
    queue=name("jobs"),
    retry=RetryPolicy(max_attempts=3, backoff=[60]),
    results=RESULTS is not None,
)
async def run_job(msg: Job, ctx: Context) -> str:
    record("attempt", msg.n, ctx.message_id, ctx.attempt)
    if msg.outcome == "retry":
        raise ValueError(f"job {msg.n} failed, try again later")
    if msg.outcome == "reject" or (msg.outcome == "broken" and not FIXED.exists()):
        raise Reject(f"job {msg.n} is broken")
    record("done", msg.n, ctx.message_id, ctx.attempt)
    return f"job {msg.n} done"
