"""A sync handler that never returns (until the process ends), with a short timeout:
every message abandons a thread."""

from __future__ import annotations

import os
import threading

from recording import name, record

from rabbitworker import App, Context, RetryPolicy, TaskMessage

app = App("hung", exchange=name("x"))
_never = threading.Event()


class Hang(TaskMessage, routing_key=name("hang")):
    n: int


@app.task(queue=name("q"), timeout=0.3, retry=RetryPolicy(max_attempts=1))
def hang(msg: Hang, ctx: Context) -> None:
    record("start", msg.n, ctx.message_id, os.getpid())
    _never.wait()
