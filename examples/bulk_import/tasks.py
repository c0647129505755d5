"""A bulk import paced so that it cannot swamp the database: each row is one message,
inserted at most RATE rows a second (BULK_RATE, default 2000/s) by at most 3 handlers
at once per worker process, each on one of 3 database connections."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from rabbitworker import App, Middleware, TaskMessage

PREFIX = os.environ.get("BULK_PREFIX", "bulk")
DSN = os.environ.get("BULK_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = os.environ.get("BULK_TABLE", "bulk_import_rows")
RATE = os.environ.get("BULK_RATE", "2000/s")
CONNECTIONS = 3


class Connections(Middleware):
    """Opens the worker's database connections when it starts, closes them when it
    stops; a handler borrows one (there are as many as the task's concurrency)."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self.free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()

    async def on_worker_start(self) -> None:
        for _ in range(self.size):
            self.free.put_nowait(await psycopg.AsyncConnection.connect(self.dsn, autocommit=True))

    async def on_worker_stop(self) -> None:
        while not self.free.empty():
            await self.free.get_nowait().close()


db = Connections(DSN, CONNECTIONS)
app = App("bulk-import", exchange=f"{PREFIX}.x", middleware=[db])


class ImportRow(TaskMessage, routing_key=f"{PREFIX}.rows.import"):
    id: int
    name: str
    amount: int


@app.task(queue=f"{PREFIX}.import", rate_limit=RATE, concurrency=CONNECTIONS)
async def import_row(msg: ImportRow) -> None:
    conn = await db.free.get()
    try:
        await conn.execute(
            f"INSERT INTO {TABLE} (id, name, amount) VALUES (%s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",  # a redelivered row is inserted once
            (msg.id, msg.name, msg.amount),
        )
    finally:
        db.free.put_nowait(conn)
