"""Two message types on two queues, for the worker tests run as subprocesses."""

from __future__ import annotations

import os
import time
from pathlib import Path

from recording import name, record

from rabbitworker import App, Context, TaskMessage

app = App("two-queues", exchange=name("x"))


class Alpha(TaskMessage, routing_key=name("alpha")):
    n: int


class Beta(TaskMessage, routing_key=name("beta")):
    n: int


class Block(TaskMessage, routing_key=name("block")):
    n: int


@app.task(queue=name("a"))
async def handle_alpha(msg: Alpha, ctx: Context) -> None:
    record("alpha", msg.n, ctx.message_id, os.getpid())


@app.task(queue=name("b"))
async def handle_beta(msg: Beta, ctx: Context) -> None:
    record("beta", msg.n, ctx.message_id, os.getpid())


@app.task(queue=name("a"))
def handle_block(msg: Block, ctx: Context) -> None:
    """Blocks until the file RW_TEST_RELEASE exists."""
    record("block-start", msg.n, ctx.message_id, os.getpid())
    release = Path(os.environ.get("RW_TEST_RELEASE", "/nonexistent"))
    while not release.exists():
        time.sleep(0.02)
    record("block-done", msg.n, ctx.message_id, os.getpid())
