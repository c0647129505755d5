"""`rabbitworker publish --file rows.jsonl` as a user runs it: every row validated
before anything is sent, then each confirmed row's line and message id printed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from support import APPS, ROOT, queue_depth


def run_cli(broker_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RABBITWORKER_URL": broker_url,
        "RW_TEST_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
    }
    return subprocess.run(
        [sys.executable, "-m", "rabbitworker", "publish", "--app", "rpc_math:app", *args],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_every_row_of_the_file_is_published_and_printed_with_its_line(
    app_module: Any,
    broker_url: str,
    prefix: str,
    tmp_path: Path,
    amqp: aio_pika.abc.AbstractConnection,
) -> None:
    m = app_module("rpc_math")  # deletes the app's topology afterwards
    rows = tmp_path / "rows.jsonl"
    lines = [f'{{"routing_key": "math.note", "body": {{"n": {n}}}}}' for n in range(5)]
    rows.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")
    done = run_cli(broker_url, prefix, "--file", str(rows), "--window", "2")
    assert done.returncode == 0, done.stderr
    printed = [line.split() for line in done.stdout.splitlines()]
    assert [int(number) for number, _ in printed] == [1, 2, 4, 5, 6]
    assert all(str(uuid.UUID(message_id)) == message_id for _, message_id in printed)
    assert done.stderr.splitlines() == ["published 5 of 5 messages; 0 failed"]
    assert await queue_depth(amqp, m.name("notes")) == 5


def test_a_bad_row_is_refused_naming_its_line_before_anything_is_sent(
    app_module: Any, broker_url: str, prefix: str, tmp_path: Path
) -> None:
    app_module("rpc_math")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"routing_key": "math.note", "body": {"n": 1}}\n'
        '{"routing_key": "math.note", "body": {"n": "one"}}\n'
    )
    done = run_cli(broker_url, prefix, "--file", str(rows))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: line 2: invalid Note: n: Input should be")
    both = run_cli(broker_url, prefix, "math.note", '{"n": 1}', "--file", str(rows))
    assert both.returncode == 2
    assert "either ROUTING_KEY JSON or --file" in both.stderr
