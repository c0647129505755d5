"""A task whose handler kills the worker process on every delivery, on a quorum
queue with a delivery limit of 2: it must end in the dead-letter queue."""

from __future__ import annotations

import os

from recording import name, record

from rabbitworker import App, Context, TaskMessage

app = App("failures-crash", exchange=name("x"), delivery_limit=2)


class Poison(TaskMessage, routing_key=name("poison")):
    n: int


@app.task(queue=name("poison"))
async def crash(msg: Poison, ctx: Context) -> None:
    record("crash", msg.n, ctx.message_id, os.getpid())
    os._exit(3)
