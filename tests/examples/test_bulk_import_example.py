"""examples/bulk_import run as a user would (one command): every row ends up in
PostgreSQL once, no faster than its rate limit. The test runs 1,000 rows at 200/s
(at least 5 s) rather than the example's default 10,000 at 2000/s, to stay fast on
a loaded machine; the code path is the same."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import psycopg
import pytest
from support import ROOT, delete_topology

EXAMPLE = ROOT / "examples" / "bulk_import"
ROWS, RATE = 1000, 200


@pytest.fixture
async def table(broker_url: str, postgres_url: str, prefix: str) -> AsyncIterator[str]:
    name = prefix.replace("-", "_") + "_rows"
    yield name
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
    await delete_topology(broker_url, f"{prefix}.x", [f"{prefix}.import"])


async def test_the_bulk_import_example_inserts_every_row_at_its_paced_rate(
    broker_url: str, postgres_url: str, prefix: str, table: str
) -> None:
    env = {
        **os.environ,
        "RABBITWORKER_URL": broker_url,
        "BULK_DSN": postgres_url,
        "BULK_PREFIX": prefix,
        "BULK_TABLE": table,
        "BULK_ROWS": str(ROWS),
        "BULK_RATE": f"{RATE}/s",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    took = re.search(rf"inserted {ROWS} rows in ([0-9.]+) s", done.stdout)
    assert took is not None, done.stdout
    assert float(took.group(1)) >= 0.95 * ROWS / RATE
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cur = await conn.execute(f"SELECT count(*), count(DISTINCT id), max(id) FROM {table}")
        assert await cur.fetchone() == (ROWS, ROWS, ROWS - 1)
