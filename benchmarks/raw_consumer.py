"""The baseline consumer as a process of its own (`python -m benchmarks.raw_consumer`),
with the same start and stop protocol as `bench_app`: ready file, go file, stats on
SIGTERM. Reads RABBITWORKER_URL, RWB_QUEUE and RWB_DIR."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from .common import Job

__all__ = ["main"]


async def consume(url: str, queue_name: str, out: Path) -> None:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=100)
    queue = await channel.get_queue(queue_name, ensure=False)
    stats = {"pid": os.getpid(), "count": 0, "first": 0.0, "last": 0.0}
    in_flight = 0
    idle = asyncio.Event()
    idle.set()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal in_flight
        in_flight += 1
        idle.clear()
        Job.model_validate_json(message.body)
        now = time.time()
        if not stats["count"]:
            stats["first"] = now
        stats["count"] += 1
        stats["last"] = now
        await message.ack()
        in_flight -= 1
        if not in_flight:
            idle.set()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    (out / f"ready-{os.getpid()}").touch()
    while not (out / "go").exists():
        await asyncio.sleep(0.005)
    tag = await queue.consume(on_message)
    await stop.wait()
    await queue.cancel(tag)
    await asyncio.wait_for(idle.wait(), 30)
    (out / f"stats-{os.getpid()}.json").write_text(json.dumps(stats))
    await connection.close()


def main() -> None:
    asyncio.run(
        consume(
            os.environ["RABBITWORKER_URL"], os.environ["RWB_QUEUE"], Path(os.environ["RWB_DIR"])
        )
    )


if __name__ == "__main__":
    main()
