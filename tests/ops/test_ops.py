"""Operations on a real broker: /metrics counts by outcome (one process and two),
/readyz follows the connection and the drain, and JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import WorkerProcess, eventually, read_record
from support.proxy import Proxy

from rabbitworker import App, TaskMessage
from rabbitworker.errors import UnroutableError
from rabbitworker.middleware import Middleware
from rabbitworker.wire import Properties

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", timeout=10)


async def scrape(port: int) -> Metrics:
    text = (await get(port, "/metrics")).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def messages(metrics: Metrics, queue: str, outcome: str) -> float:
    for (name, labels), value in metrics.items():
        d = dict(labels)
        if name == "rabbitworker_messages_total" and (d["queue"], d["outcome"]) == (
            queue,
            outcome,
        ):
            return value
    return 0.0


def histogram_count(metrics: Metrics, queue: str) -> float:
    return sum(
        v
        for (name, labels), v in metrics.items()
        if name == "rabbitworker_handler_duration_seconds_count" and dict(labels)["queue"] == queue
    )


async def publish_jobs(mod: Any, kinds: list[str], note: str = "") -> None:
    async with mod.app:
        for n, kind in enumerate(kinds):
            await mod.app.publish(mod.Job(n=n, kind=kind, note=note))


async def ready(port: int) -> bool:
    try:
        return (await get(port, "/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


async def test_metrics_count_messages_by_outcome_with_a_duration_histogram(
    app_module: Callable[[str], Any],
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    mod = app_module("ops_app")
    port = free_port()
    worker = worker_process("--app", "ops_app:app", "--metrics-port", str(port))
    worker.wait_consuming()
    await publish_jobs(mod, ["ok", "ok", "ok", "retry-once", "reject"])
    await eventually(lambda: len(read_record(tmp_path)) == 10, timeout=20)  # 6 starts, 4 done
    queue = mod.app.queues[0]

    async def counted() -> bool:
        m = await scrape(port)
        return messages(m, queue, "ok") == 4 and messages(m, queue, "dead_lettered") == 1

    await eventually(counted, timeout=10)
    m = await scrape(port)
    assert messages(m, queue, "retried") == 1
    assert messages(m, queue, "handed_back") == 0
    assert histogram_count(m, queue) == 6
    retries = [v for (n, _), v in m.items() if n == "rabbitworker_retries_total"]
    dead = [dict(lb) for (n, lb), _ in m.items() if n == "rabbitworker_dead_letters_total"]
    assert retries == [1.0]
    assert len(dead) == 1 and "Reject" in dead[0]["error"]
    assert worker.stop() == 0


async def test_with_two_processes_one_scrape_counts_both(
    app_module: Callable[[str], Any],
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    mod = app_module("ops_app")
    port = free_port()
    worker = worker_process(
        "--app", "ops_app:app", "--processes", "2", "--prefetch", "1",
        "--metrics-port", str(port), "--health-port", str(port),
    )  # fmt: skip
    await eventually(lambda: ready(port), timeout=30)
    await publish_jobs(mod, ["slow"] * 30)

    def done() -> list[list[str]]:
        return [r for r in read_record(tmp_path) if r[0] == "done"]

    await eventually(lambda: len(done()) == 30, timeout=30)
    pids = {r[3] for r in done()}
    assert len(pids) == 2, pids  # both processes handled some
    queue = mod.app.queues[0]

    async def counted() -> bool:
        return messages(await scrape(port), queue, "ok") == 30

    await eventually(counted, timeout=10)
    assert histogram_count(await scrape(port), queue) == 30

    # The supervisor is unready from its SIGTERM on, while a worker still drains.
    await publish_jobs(mod, ["wait"])

    def starts() -> int:
        return sum(1 for r in read_record(tmp_path) if r[0] == "start")

    await eventually(lambda: starts() == 31, timeout=10)
    worker.proc.send_signal(signal.SIGTERM)
    await eventually(lambda: _not(ready(port)), timeout=10)
    assert (await get(port, "/readyz")).json()["draining"] is True
    assert (await get(port, "/healthz")).status_code == 200
    assert len(done()) == 30 and worker.proc.poll() is None
    Path(f"{tmp_path / 'handled.txt'}.go").touch()
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    assert len(done()) == 31


async def test_readyz_follows_the_connection_and_fails_first_at_sigterm(
    app_module: Callable[[str], Any],
    worker_process: Callable[..., WorkerProcess],
    proxy: Proxy,
    broker_url: str,
    tmp_path: Path,
) -> None:
    mod = app_module("ops_app")
    port = free_port()
    worker = worker_process(
        "--app", "ops_app:app", "--health-port", str(port), "--metrics-port", str(port),
        "--grace", "30", "--concurrency", "1", env={"RABBITWORKER_URL": proxy.url(broker_url)},
    )  # fmt: skip
    await eventually(lambda: ready(port), timeout=20)
    assert (await get(port, "/healthz")).status_code == 200

    proxy.cut(down="refuse")
    await eventually(lambda: _not(ready(port)), timeout=10)
    body = (await get(port, "/readyz")).json()
    assert body["connected"] is False
    assert (await get(port, "/healthz")).status_code == 200  # alive, only not ready
    await proxy.restore()
    await eventually(lambda: ready(port), timeout=20)

    async def reconnected() -> bool:
        return (await scrape(port)).get(("rabbitworker_reconnects_total", ()), 0) == 1

    await eventually(reconnected, timeout=5)  # sampled once a second

    # A handler that runs until told: at SIGTERM the worker is unready at once,
    # while that handler still runs and the process still answers.
    await publish_jobs(mod, ["wait", "ok"])  # the second waits for the only slot
    await eventually(lambda: any(r[0] == "start" for r in read_record(tmp_path)), timeout=10)
    worker.proc.send_signal(signal.SIGTERM)
    await eventually(lambda: _not(ready(port)), timeout=10)
    assert (await get(port, "/readyz")).json()["draining"] is True
    assert (await get(port, "/healthz")).status_code == 200
    assert worker.proc.poll() is None
    assert not any(r[0] == "done" for r in read_record(tmp_path))
    queue = mod.app.queues[0]

    async def one_in_flight() -> bool:
        m = await scrape(port)
        return m.get(("rabbitworker_messages_in_flight", (("queue", queue),))) == 1

    await eventually(one_in_flight, timeout=5)

    async def one_handed_back() -> bool:
        return messages(await scrape(port), queue, "handed_back") == 1

    await eventually(one_handed_back, timeout=10)  # the waiting one, by the drain
    Path(f"{tmp_path / 'handled.txt'}.go").touch()
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    assert any(r[0] == "done" for r in read_record(tmp_path))


async def _not(check: Any) -> bool:
    return not await check


def _json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


async def _run_json_worker(
    mod: Any,
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
    *extra: str,
) -> list[dict[str, Any]]:
    worker = worker_process("--app", "ops_app:app", "--log-format", "json", *extra)
    worker.wait_consuming()
    start = len(read_record(tmp_path))
    await publish_jobs(mod, ["ok", "retry-once", "reject"], note="a-body-marker")
    await eventually(lambda: len(read_record(tmp_path)) - start == 6, timeout=20)
    lines: list[dict[str, Any]] = []

    def logged() -> bool:
        lines[:] = _json_lines(worker.output)
        return sum(1 for line in lines if line["logger"] == "rabbitworker.messages") == 4

    await eventually(logged, timeout=10)
    assert worker.stop() == 0
    return _json_lines(worker.output)  # every line parses, to the last


async def test_json_logs_carry_the_message_fields_and_no_body_unless_asked(
    app_module: Callable[[str], Any],
    worker_process: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    mod = app_module("ops_app")
    lines = await _run_json_worker(mod, worker_process, tmp_path)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    handled = [line for line in lines if line["logger"] == "rabbitworker.messages"]
    fields = {"message_id", "queue", "type", "attempt", "duration", "outcome"}
    assert all(fields <= set(line) for line in handled)
    assert sorted(line["outcome"] for line in handled) == ["dead_lettered", "ok", "ok", "retried"]
    assert {line["queue"] for line in handled} == {mod.app.queues[0]}
    assert "a-body-marker" not in json.dumps(lines)
    assert "guest:guest" not in json.dumps(lines)

    with_bodies = await _run_json_worker(mod, worker_process, tmp_path, "--log-bodies")
    bodies = [line["body"] for line in with_bodies if line["logger"] == "rabbitworker.messages"]
    assert len(bodies) == 4 and all("a-body-marker" in b for b in bodies)


def test_a_supervised_worker_serves_nothing_itself() -> None:
    from rabbitworker.supervisor import child_args

    args = ["--app", "a:b", "--metrics-port", "9100", "--health-port=9101", "--processes", "2"]
    assert child_args(args) == ["--app", "a:b", "--processes", "1"]
    assert os.environ.get("RABBITWORKER_OPS_DIR") is None


def test_a_port_in_use_is_one_line_and_exit_2(prefix: str) -> None:
    from support.cli import rabbitworker

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = rabbitworker(
            "run", "--app", "ops_app:app", "--health-port", str(port),
            env={"RW_TEST_PREFIX": prefix, "RABBITWORKER_CONNECT_TIMEOUT": "1"},
        )  # fmt: skip
    assert f"cannot serve on 0.0.0.0:{port}" in run.error_line()


class _Hooks(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, BaseException | None]] = []

    def before_publish(self, routing_key: str, properties: Properties) -> None:
        raise RuntimeError("a broken hook")  # logged and contained

    def after_publish(
        self, routing_key: str, properties: Properties, duration: float, error: BaseException | None
    ) -> None:
        self.seen.append((routing_key, duration, error))


async def test_publish_hooks_see_each_confirm_and_a_failing_hook_is_contained(
    make_app: Callable[..., App], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = _Hooks()
    app = make_app(middleware=[hooks])

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        n: int

    @app.task(queue=f"{prefix}.pings")
    async def ping(msg: Ping) -> None:
        pass

    async with app:
        await app.publish(Ping(n=1))
        with pytest.raises(UnroutableError):
            await app.publish(_Stray(n=3))
    assert [(k, e is None) for k, _, e in hooks.seen] == [
        (f"{prefix}.ping", True),
        (_Stray.routing_key, False),
    ]
    assert hooks.seen[0][1] > 0
    assert "a broken hook" in caplog.text


class _Stray(TaskMessage, routing_key="rwt-ops.nobody-listens"):
    n: int


def test_json_lines_mask_the_password_in_the_message_the_fields_and_the_traceback() -> None:
    import logging
    import sys

    from rabbitworker.logs import JsonFormatter, MaskPassword, hide_password

    hide_password("amqp://user:s3cr3t-pw@example.org/")
    try:
        raise ConnectionError("refused by amqp://user:s3cr3t-pw@example.org/")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "rabbitworker.messages", logging.ERROR, __file__, 1, "lost %s", ("s3cr3t-pw",), exc_info
    )
    record.__dict__.update(queue="q", error="ConnectionError: s3cr3t-pw")
    MaskPassword().filter(record)
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert "s3cr3t-pw" not in line
    assert parsed["message"] == "lost ***" and parsed["queue"] == "q"
    assert "ConnectionError" in parsed["exc_info"]
