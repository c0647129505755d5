"""One command: create the table, start a worker, publish 10,000 rows, wait until
they are all in PostgreSQL, print how long it took, stop the worker.

    RABBITWORKER_URL=amqp://... BULK_DSN=postgresql://... python examples/bulk_import/run.py
"""

from __future__ import annotations

import asyncio
import os
import time

import psycopg
from tasks import DSN, TABLE, ImportRow, app

from rabbitworker import Worker

ROWS = int(os.environ.get("BULK_ROWS", "10000"))


async def count(conn: psycopg.AsyncConnection[object]) -> int:
    row = await (await conn.execute(f"SELECT count(*) FROM {TABLE}")).fetchone()
    return int(row[0]) if row else 0


async def main() -> None:
    conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
    async with conn, app:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id int PRIMARY KEY, name text, amount int)"
        )
        worker = Worker(app)
        running = asyncio.create_task(worker.run(handle_signals=False))
        started = time.monotonic()
        for first in range(0, ROWS, 500):
            batch = range(first, min(first + 500, ROWS))
            await asyncio.gather(
                *(app.publish(ImportRow(id=i, name=f"row {i}", amount=i % 97)) for i in batch)
            )
        print(f"published {ROWS} rows in {time.monotonic() - started:.1f} s", flush=True)
        while (done := await count(conn)) < ROWS:
            print(f"  {done} rows inserted", flush=True)
            await asyncio.sleep(1)
        took = time.monotonic() - started
        print(f"inserted {ROWS} rows in {took:.1f} s ({ROWS / took:.0f} rows/s)", flush=True)
        worker.stop()
        await running


if __name__ == "__main__":
    asyncio.run(main())
