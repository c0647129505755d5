"""A task paced fleet-wide at 20/s (Redis from RW_TEST_REDIS_URL), for the pacing
test run with two worker processes: each start is recorded with its time and pid."""

from __future__ import annotations

import os
import time

from recording import name, record

from rabbitworker import App, RateLimit, TaskMessage

app = App("paced", exchange=name("x"))
REDIS = os.environ.get("RW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Paced(TaskMessage, routing_key=name("paced")):
    n: int


@app.task(queue=name("paced"), rate_limit=RateLimit("20/s", scope="fleet", url=REDIS))
async def handle_paced(msg: Paced) -> None:
    record("start", msg.n, time.time(), os.getpid())
