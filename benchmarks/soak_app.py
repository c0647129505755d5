"""The app the chaos soak (benchmarks/soak.py) runs under `rabbitworker run`: one task
that records every handling as a line "<message id> <pid>" in a file.

Names come from SOAK_PREFIX, so every soak run has its own exchange and queue.
"""

from __future__ import annotations

import os

from rabbitworker import App, Context, TaskMessage

__all__ = ["QUEUE", "Job", "app", "handle", "record_line"]

PREFIX = os.environ.get("SOAK_PREFIX", "soak-manual")
RECORD = os.environ.get("SOAK_RECORD", "/tmp/rabbitworker-soak.txt")
QUEUE = f"{PREFIX}.jobs"

app = App("soak", exchange=f"{PREFIX}.x")


class Job(TaskMessage, routing_key=f"{PREFIX}.job"):
    n: int


_fd: int | None = None


def record_line(message_id: str) -> None:
    """Append one line. With O_APPEND a single small write() is never interleaved
    with another process's, and it reaches the file before the ack is sent."""
    global _fd
    if _fd is None:
        _fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{message_id} {os.getpid()}\n".encode())


@app.task(queue=QUEUE)
async def handle(msg: Job, ctx: Context) -> None:
    record_line(ctx.message_id)
