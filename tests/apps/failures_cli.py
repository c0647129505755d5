"""A task that fails until the file `<RW_TEST_RECORD>.fixed` exists, for the
dead-letter CLI tests (`dlq list / replay / purge`)."""

from __future__ import annotations

from pathlib import Path

from recording import RECORD, name, record

from rabbitworker import App, Context, RetryPolicy, TaskMessage

app = App("failures-cli", exchange=name("x"))
FIXED = Path(f"{RECORD}.fixed")


class Job(TaskMessage, routing_key=name("job")):
    n: int


@app.task(queue=name("jobs"), retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
async def run_job(msg: Job, ctx: Context) -> None:
    record("attempt", msg.n, ctx.message_id, ctx.attempt)
    if not FIXED.exists():
        raise ValueError(f"job {msg.n} is broken")
    record("done", msg.n, ctx.message_id, ctx.attempt)
