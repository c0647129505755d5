"""The app `rabbitworker run` serves in the multi-process and memory benchmarks.

Names come from the environment (RWB_EXCHANGE, RWB_QUEUE). Each worker process
writes `ready-<pid>` into RWB_DIR once connected, starts consuming only when the
file `go` appears there (so all processes start together), and on stop writes
`stats-<pid>.json` with its count and first/last handling times.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from rabbitworker import App
from rabbitworker.middleware import Middleware

from .common import Job

__all__ = ["app"]

DIR = Path(os.environ.get("RWB_DIR", "/tmp/rwb"))


class Stats(Middleware):
    count = 0
    first = 0.0
    last = 0.0

    async def on_worker_start(self) -> None:
        (DIR / f"ready-{os.getpid()}").touch()
        while not (DIR / "go").exists():
            await asyncio.sleep(0.005)

    async def on_worker_stop(self) -> None:
        stats = {"pid": os.getpid(), "count": self.count, "first": self.first, "last": self.last}
        (DIR / f"stats-{os.getpid()}.json").write_text(json.dumps(stats))


stats = Stats()
app = App("bench", exchange=os.environ.get("RWB_EXCHANGE", "rwb.x"), middleware=[stats])


@app.task(queue=os.environ.get("RWB_QUEUE", "rwb.q"))
async def handle(msg: Job) -> None:
    now = time.time()
    if not stats.count:
        stats.first = now
    stats.count += 1
    stats.last = now
