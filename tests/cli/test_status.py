"""`rabbitworker status`: the counts per queue match what a test published,
retried and dead-lettered, in the library, as a table and as JSON."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import APPS, ROOT, eventually, read_record
from support.dashboard import free_port, keep_logging  # noqa: F401  (fixture)
from support.nodes import RabbitNode
from typer.testing import CliRunner

from rabbitworker import App, Reject, RetryPolicy, TaskMessage
from rabbitworker.cli import cli
from rabbitworker.errors import ConfigurationError
from rabbitworker.management import management_target
from rabbitworker.status import QueueStatus, gather_status, status_table

sys.path.insert(0, str(APPS))

from failures_support import run_cli


async def test_status_counts_what_was_published_retried_and_dead_lettered(
    app_module: Any, start_worker: Any, broker_url: str, prefix: str, tmp_path: Path
) -> None:
    m = app_module("ops_console")
    queue = m.name("jobs")
    async with m.app:
        for n, outcome in enumerate(["ok", "retry", "reject", "ok"]):
            await m.app.publish(m.Job(n=n, outcome=outcome))
        [waiting] = await gather_status(m.app)
        assert (waiting.queue, waiting.ready, waiting.consumers) == (queue, 4, 0)
        assert (waiting.retrying, waiting.dead_letters, waiting.suspects) == (0, 0, 0)
        assert waiting.unacked is None  # plain AMQP does not tell

        await start_worker(m.app)
        settled: list[QueueStatus] = []

        async def settles() -> bool:
            settled[:] = await gather_status(m.app)
            s = settled[0]
            return (s.ready, s.retrying, s.dead_letters) == (0, 1, 1)

        await eventually(settles, timeout=20)
        [now] = settled
        assert now.consumers == 1
        assert now.retry_queues == {f"{queue}.retry.60000": 1}
        done = sorted(line[1] for line in read_record(tmp_path) if line[0] == "done")
        assert done == ["0", "3"]

        table = status_table(settled).splitlines()
        assert table[0].split() == [
            "QUEUE", "READY", "UNACKED", "CONSUMERS", "RETRYING", "SUSPECTS", "DLQ"
        ]  # fmt: skip
        assert table[1].split() == [queue, "0", "-", "1", "1", "0", "1"]

        # The command line says the same, for people and for scripts.
        args = ("status", "--app", "ops_console:app")
        shown = await run_cli(*args, broker_url=broker_url, prefix=prefix, record=tmp_path / "r")
        assert shown.code == 0, shown.stderr
        assert shown.stdout.splitlines()[1].split() == [queue, "0", "-", "1", "1", "0", "1"]
        as_json = await run_cli(
            *args, "--json", broker_url=broker_url, prefix=prefix, record=tmp_path / "r"
        )
        assert as_json.code == 0, as_json.stderr
        [row] = json.loads(as_json.stdout)
        assert row["queue"] == queue
        assert (row["ready"], row["consumers"], row["retrying"], row["dead_letters"]) == (
            0,
            1,
            1,
            1,
        )


async def test_status_with_an_unreachable_management_api_is_one_line_without_the_password(
    app_module: Any, broker_url: str, prefix: str, tmp_path: Path
) -> None:
    app_module("ops_console")
    secret = f"pw-{prefix}"
    shown = await run_cli(
        "status", "--app", "ops_console:app", "--management-url",
        f"http://admin:{secret}@127.0.0.1:1/",
        broker_url=broker_url, prefix=prefix, record=tmp_path / "r",
    )  # fmt: skip
    assert shown.code == 2
    assert shown.stderr.count("\n") == 1
    assert "management API at http://127.0.0.1:1 did not answer" in shown.stderr
    assert secret not in shown.stderr + shown.stdout


def enable_management(node: RabbitNode) -> None:
    """Enable the management plugin on a harness node (never the shared one): the
    plugins file named must be the node's, or rabbitmq-plugins writes /etc/rabbitmq's."""
    plugins_file = node.home / "enabled_plugins"
    assert plugins_file.exists()
    shared = Path("/etc/rabbitmq/enabled_plugins")
    before = shared.read_bytes() if shared.exists() else None
    env = {**os.environ, "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins_file)}
    subprocess.run(
        ["rabbitmq-plugins", "-q", "-n", node.name, "enable", "rabbitmq_management"],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert "rabbitmq_management" in plugins_file.read_text()
    assert (shared.read_bytes() if shared.exists() else None) == before, "shared node touched"


async def test_status_with_the_management_api_adds_unacked_counts_and_rates(
    make_rabbit_node: Any, prefix: str, start_worker: Any
) -> None:
    """About 25 s: the shared node has no management plugin and must not get one, so
    this starts a node of its own and enables the plugin there."""
    port = free_port()
    node = make_rabbit_node(
        {
            "management.tcp.port": port,
            "management.tcp.ip": "127.0.0.1",
            "collect_statistics_interval": 500,
        }
    )
    enable_management(node)
    api = f"http://127.0.0.1:{port}/"
    await eventually(lambda: _answers(api), timeout=30, interval=0.2)

    app = App("ops-management", url=node.url, exchange=f"{prefix}.x")
    release = asyncio.Event()

    class Slow(TaskMessage, routing_key=f"{prefix}.slow"):
        n: int

    @app.task(queue=f"{prefix}.slow")
    async def slow(msg: Slow) -> None:
        await release.wait()

    try:
        async with app:
            for n in range(5):
                await app.publish(Slow(n=n))
            await start_worker(app, concurrency=2, prefetch=2)
            seen: list[QueueStatus] = []

            async def two_held() -> bool:
                seen[:] = await gather_status(app, management_url=api)
                return (seen[0].ready, seen[0].unacked) == (3, 2)

            await eventually(two_held, timeout=20, interval=0.2)
            [row] = seen
            assert row.consumers == 1
            assert row.publish_rate is not None and row.deliver_rate is not None
            lines = status_table(seen, rates=True).splitlines()
            assert lines[0].split()[-2:] == ["PUBLISH/S", "DELIVER/S"]
            assert lines[1].split()[:3] == [f"{prefix}.slow", "3", "2"]
            release.set()
    finally:
        release.set()
        await app.close()


async def _answers(url: str) -> bool:
    def get() -> bool:
        try:
            with urllib.request.urlopen(url + "api/overview", timeout=2) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for the login
        except OSError:
            return False

    return await asyncio.to_thread(get)


def test_status_watch_redraws_until_interrupted(
    app_module: Any, broker_url: str, prefix: str, tmp_path: Path
) -> None:
    app_module("ops_console")
    env = {
        **os.environ,
        "RABBITWORKER_URL": broker_url,
        "RW_TEST_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
    }
    out = tmp_path / "watch.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rabbitworker", "status", "--app", "ops_console:app",
             "--watch", "--interval", "0.2"],
            cwd=APPS, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while out.read_text().count("QUEUE") < 3:
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    # Each screen starts with a title line (the escape that clears a terminal is
    # left out when the output is not one).
    lines = out.read_text().splitlines()
    titles = [i for i, line in enumerate(lines) if line.endswith("(Ctrl-C to stop)")]
    assert len(titles) >= 3
    assert lines[titles[0]].startswith("ops-console  ")
    assert lines[titles[0] + 2].split()[:2] == [f"{prefix}.jobs", "0"]
    assert code == 130


def test_the_management_login_defaults_to_the_broker_urls() -> None:
    own = management_target("http://admin:p%40ss@mq:15672/x/", "amqp://u:pw@mq/prod")
    assert (own.base, own.vhost) == ("http://mq:15672/x", "prod")
    assert base64.b64decode(own.authorization.split()[1]) == b"admin:p@ss"
    borrowed = management_target("https://mq/", "amqp://u:pw@mq:5671/")
    assert (borrowed.base, borrowed.vhost) == ("https://mq", "/")
    assert base64.b64decode(borrowed.authorization.split()[1]) == b"u:pw"
    with pytest.raises(ConfigurationError, match=r"http\(s\)://host:port/"):
        management_target("amqp://u:secret@mq/", "amqp://u:pw@mq/")


def test_status_json_for_an_app_whose_queues_are_empty(
    make_app: Callable[..., App],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    keep_logging: None,  # noqa: F811
) -> None:
    # In this process, through the command's own code: the app is connected and
    # closed by the command.
    module = ModuleType(f"{prefix.replace('-', '_')}_tasks")
    module.app = app = make_app("fresh")  # type: ignore[attr-defined]

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        pass

    @app.task(queue=f"{prefix}.ping")
    async def ping(msg: Ping) -> None:
        pass

    monkeypatch.setitem(sys.modules, module.__name__, module)
    shown = CliRunner().invoke(cli, ["status", "--app", f"{module.__name__}:app", "--json"])
    assert shown.exit_code == 0, shown.stderr
    [row] = json.loads(shown.stdout)
    assert row["queue"] == f"{prefix}.ping"
    assert (row["ready"], row["consumers"], row["dead_letters"]) == (0, 0, 0)


async def test_status_reads_the_in_memory_broker_of_rabbitworker_testing_too() -> None:
    from rabbitworker.testing import TestBroker

    app = App("status-memory", exchange="mem")

    class Job(TaskMessage, routing_key="mem.job"):
        outcome: str

    @app.task(queue="mem.jobs", retry=RetryPolicy(max_attempts=3, backoff=[60]))
    async def job(msg: Job) -> None:
        if msg.outcome == "retry":
            raise ValueError("later")
        if msg.outcome == "reject":
            raise Reject("never")

    async with TestBroker(app) as broker:
        for outcome in ("ok", "retry", "reject"):
            await app.publish(Job(outcome=outcome))
        await broker.advance(1)  # the retry waits 60 virtual seconds
        [row] = await gather_status(app)
    assert (row.queue, row.ready, row.consumers) == ("mem.jobs", 0, 1)
    assert (row.retrying, row.dead_letters, row.retry_queues) == (1, 1, {"mem.jobs.retry.60000": 1})
