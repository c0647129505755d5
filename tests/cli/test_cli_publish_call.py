"""`rabbitworker publish` and `rabbitworker call` as a user runs them, against a
worker subprocess."""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import APPS, ROOT, eventually, read_record

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def rabbitworker_cli(broker_url: str, prefix: str) -> Run:
    """Run `rabbitworker ...` with tests/apps/rpc_math importable under this test's prefix."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "RABBITWORKER_URL": broker_url,
            "RW_TEST_PREFIX": prefix,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
        }
        return subprocess.run(
            [sys.executable, "-m", "rabbitworker", *args],
            cwd=APPS,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def math_worker(app_module: Any, worker_process: Any) -> Any:
    m = app_module("rpc_math")
    queues = f"{m.name('rpc')},{m.name('notes')}"
    worker_process("--app", "rpc_math:app", "--queues", queues).wait_consuming()
    return m


async def test_publish_prints_the_message_id_of_the_message_the_worker_handles(
    math_worker: Any, rabbitworker_cli: Run, tmp_path: Path
) -> None:
    done = rabbitworker_cli("publish", "--app", "rpc_math:app", "math.note", '{"n": 7}')
    assert done.returncode == 0, done.stderr
    message_id = done.stdout.strip()
    assert str(uuid.UUID(message_id)) == message_id
    await eventually(lambda: len(read_record(tmp_path)) == 1)
    assert read_record(tmp_path) == [["note", "7", message_id]]


async def test_call_prints_the_reply_as_json(math_worker: Any, rabbitworker_cli: Run) -> None:
    done = rabbitworker_cli("call", "--app", "rpc_math:app", "math.add", '{"a": 4, "b": 5}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"value": 9}

    untyped = rabbitworker_cli("call", "--app", "rpc_math:app", "math.describe", '{"n": 3}')
    assert untyped.returncode == 0, untyped.stderr
    assert json.loads(untyped.stdout)["even"] is False


async def test_call_reports_the_remote_error_in_one_line(
    math_worker: Any, rabbitworker_cli: Run
) -> None:
    done = rabbitworker_cli("call", "--app", "rpc_math:app", "math.divide", '{"a": 1, "b": 0}')
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: the handler raised ZeroDivisionError: float division by zero"
    ]


@pytest.mark.parametrize("command", ["publish", "call"])
@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ('{"a": "four", "b": 5}', "error: invalid Add: a: Input should be a valid integer"),
        ('{"a": 4}', "error: invalid Add: b: Field required"),
        ("{a: 4", "error: invalid Add: body: Invalid JSON"),
    ],
)
def test_json_that_does_not_validate_is_refused_with_one_line_and_exit_2(
    rabbitworker_cli: Run, command: str, payload: str, complaint: str
) -> None:
    done = rabbitworker_cli(command, "--app", "rpc_math:app", "math.add", payload)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(complaint)


def test_an_unknown_routing_key_is_refused_naming_the_known_ones(rabbitworker_cli: Run) -> None:
    done = rabbitworker_cli("publish", "--app", "rpc_math:app", "math.subtract", "{}")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: no message type with routing key 'math.subtract'; known: math.add, "
        "math.describe, math.divide, math.multiply, math.note"
    ]
