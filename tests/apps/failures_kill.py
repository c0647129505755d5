"""A worker that is SIGKILLed right after the broker confirmed a retry copy and
before the original is acked: the message must survive (as a duplicate at worst).

The kill is armed unless RW_TEST_NO_KILL is set, so a second, normal worker can
finish the work."""

from __future__ import annotations

import os
import signal
from typing import Any

from recording import name, record

from rabbitworker import App, Context, Middleware, RetryPolicy, TaskMessage
from rabbitworker.topology import retry_exchange_name


class KillAfterRetryConfirmed(Middleware):
    """Wraps the worker's transport so the process dies right after a retry copy
    is confirmed, which is the last moment before the original would be acked."""

    async def on_worker_start(self) -> None:
        if os.environ.get("RW_TEST_NO_KILL"):
            return
        transport = app.transport
        send = transport.send

        async def send_then_die(exchange: str, routing_key: str, *args: Any, **kw: Any) -> None:
            await send(exchange, routing_key, *args, **kw)
            if exchange == retry_exchange_name(app.exchange):
                record("retry-confirmed-then-killed", os.getpid())
                os.kill(os.getpid(), signal.SIGKILL)

        transport.send = send_then_die  # type: ignore[method-assign]


app = App("failures-kill", exchange=name("x"), middleware=[KillAfterRetryConfirmed()])


class Flaky(TaskMessage, routing_key=name("flaky")):
    n: int


@app.task(queue=name("flaky"), retry=RetryPolicy(max_attempts=3, backoff=[0.1]))
async def flaky(msg: Flaky, ctx: Context) -> None:
    record("attempt", msg.n, ctx.message_id, ctx.attempt, os.getpid())
    if ctx.attempt == 1:
        raise ValueError("the first attempt always fails")
    record("done", msg.n, ctx.message_id, ctx.attempt, os.getpid())
