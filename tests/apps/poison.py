"""One message whose handler segfaults the worker process among ordinary ones: the
poison must end in the dead-letter queue and every ordinary message be handled.

RW_TEST_QUEUE_TYPE picks the queue type (quorum by default)."""

from __future__ import annotations

import asyncio
import ctypes
import os
from typing import Literal, cast

from recording import name, record

from rabbitworker import App, Context, TaskMessage

QueueType = Literal["quorum", "classic"]

app = App(
    "poison",
    exchange=name("x"),
    delivery_limit=3,
    queue_type=cast(QueueType, os.environ.get("RW_TEST_QUEUE_TYPE", "quorum")),
)


class Job(TaskMessage, routing_key=name("job")):
    n: int
    poison: bool = False


@app.task(queue=name("jobs"))
async def work(msg: Job, ctx: Context) -> None:
    if msg.poison:
        record("poison", msg.n, ctx.message_id, os.getpid())
        ctypes.string_at(0)  # a segfault: no Python code runs after this
    # Some work, so the poison's neighbours are in flight when it strikes.
    await asyncio.sleep(0.005)
    record("handled", msg.n, ctx.message_id, os.getpid())
