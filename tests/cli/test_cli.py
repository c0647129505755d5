"""`rabbitworker` on the command line: expected failures print one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import APPS, ROOT

from rabbitworker import __version__


def rabbitworker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "RABBITWORKER_APP"}
    full_env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(APPS)]), RW_TEST_PREFIX="rwt-cli")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rabbitworker", *args],
        cwd=APPS,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_version_prints_the_package_version() -> None:
    result = rabbitworker("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rabbitworker {__version__}"


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("no_such_module:app", "cannot import app module 'no_such_module'"),
        ("two_queues:nothing_here", "has no attribute 'nothing_here'"),
        ("two_queues", "must look like module:attribute"),
        ("two_queues:Alpha", "not a rabbitworker App"),
    ],
)
def test_a_bad_app_path_prints_one_line_and_exits_2(app: str, expected: str) -> None:
    assert expected in one_line_error(rabbitworker("run", "--app", app))


def test_no_app_at_all_prints_how_to_give_one() -> None:
    assert "RABBITWORKER_APP" in one_line_error(rabbitworker("run"))


def test_the_app_can_come_from_the_environment() -> None:
    line = one_line_error(
        rabbitworker("run", "--queues", "nope", env={"RABBITWORKER_APP": "two_queues:app"})
    )
    assert "unknown queue(s) nope" in line


def test_an_unknown_queue_prints_the_known_ones_and_exits_2() -> None:
    line = one_line_error(
        rabbitworker("run", "--app", "two_queues:app", "--queues", "rwt-cli.a,zzz")
    )
    assert "unknown queue(s) zzz" in line
    assert "rwt-cli.a" in line and "rwt-cli.b" in line


def test_an_unreachable_broker_prints_one_line_without_the_password_and_exits_2() -> None:
    line = one_line_error(
        rabbitworker(
            "run",
            "--app",
            "two_queues:app",
            "--url",
            "amqp://someone:s3cret-pw@127.0.0.1:1/",
            "--connect-timeout",
            "1",
        )
    )
    assert "cannot connect to amqp://someone:***@127.0.0.1:1/" in line
    assert "s3cret-pw" not in line


def test_a_bad_option_value_is_a_usage_error_with_exit_2() -> None:
    result = rabbitworker("run", "--app", "two_queues:app", "--prefetch", "zero")
    assert result.returncode == 2
    assert "prefetch" in result.stderr


def test_a_bad_log_level_is_refused() -> None:
    line = one_line_error(rabbitworker("run", "--app", "two_queues:app", "--log-level", "LOUD"))
    assert "--log-level" in line


def test_topology_prints_every_queue_of_the_app() -> None:
    result = rabbitworker("topology", "--app", "two_queues:app")
    assert result.returncode == 0, result.stderr
    for name in ("rwt-cli.x", "rwt-cli.x.dlx", "rwt-cli.a", "rwt-cli.a.dlq", "rwt-cli.b.dlq"):
        assert name in result.stdout
    assert "x-queue-type=quorum" in result.stdout


def test_the_demo_example_imports_and_registers_both_queues(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rabbitworker", "topology", "--app", "tasks:app"],
        cwd=ROOT / "examples" / "emails_reports",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "emails  [work]" in result.stdout and "reports  [work]" in result.stdout
