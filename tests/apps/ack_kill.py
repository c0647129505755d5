"""Workers SIGKILLed after a handler returned and before its ack went out: each
message with `kill` set kills the process the first time its handler finishes on
the work queue, at the moment settlement would acknowledge it.

RW_TEST_QUEUE_TYPE picks the queue type (quorum by default), RW_TEST_DELIVERY_LIMIT
the delivery limit (1 by default)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Literal, cast

from recording import RECORD, name, record

from rabbitworker import App, Context, Middleware, TaskMessage
from rabbitworker.transport import Delivery

QueueType = Literal["quorum", "classic"]
QUEUE = name("jobs")

# Messages whose handler finished in this process.
finished: set[str] = set()


def killed_before(message_id: str) -> bool:
    try:
        with open(RECORD) as f:
            return any(line.split()[:2] == ["killed", message_id] for line in f)
    except FileNotFoundError:
        return False


class KillBeforeAck(Middleware):
    """Wraps the transport's ack so the process dies instead of acknowledging a
    killer message whose handler just finished here."""

    async def on_worker_start(self) -> None:
        transport: Any = app.session.transport
        acks = transport.acks
        ack = acks.ack

        async def ack_or_die(delivery: Delivery) -> None:
            message_id = delivery.message_id
            if delivery.queue == QUEUE and message_id in finished and not killed_before(message_id):
                record("killed", message_id, os.getpid())
                os.kill(os.getpid(), signal.SIGKILL)
            await ack(delivery)

        acks.ack = ack_or_die


app = App(
    "ack-kill",
    exchange=name("x"),
    delivery_limit=int(os.environ.get("RW_TEST_DELIVERY_LIMIT", "1")),
    queue_type=cast(QueueType, os.environ.get("RW_TEST_QUEUE_TYPE", "quorum")),
    middleware=[KillBeforeAck()],
)


class Job(TaskMessage, routing_key=name("job")):
    n: int
    kill: bool = False


@app.task(queue=QUEUE)
async def work(msg: Job, ctx: Context) -> None:
    await asyncio.sleep(0.002)
    record("handled", msg.n, ctx.message_id, os.getpid())
    if msg.kill:
        finished.add(ctx.message_id)
