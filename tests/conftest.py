"""Test bed: find a real RabbitMQ, give every test its own exchange and queues, and
clean them up afterwards."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import aio_pika
import pytest
from nodes import (  # noqa: F401  (fixtures for extra RabbitMQ nodes and a cluster)
    make_rabbit_node,
    rabbit_cluster,
    rabbit_cluster_for_module,
    rabbit_node,
)
from proxy import Proxy

from rabbitworker import App, Worker
from rabbitworker.topology import (
    beat_state_queue_spec,
    delay_queue_name,
    retry_queue_name,
    suspect_queue_name,
)

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"

HOW_TO_GET_A_BROKER = (
    "no RabbitMQ for the tests: set RABBITWORKER_TEST_URL=amqp://user:pass@host:5672/, "
    "start one on 127.0.0.1:5672 (`rabbitmq-server -detached`, or "
    "`docker run -d -p 5672:5672 rabbitmq:3-management`), or start Docker so "
    "testcontainers can run one"
)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """A broker, in this order: RABBITWORKER_TEST_URL, 127.0.0.1:5672, testcontainers."""
    url = os.environ.get("RABBITWORKER_TEST_URL")
    if url:
        yield url
        return
    if _port_open("127.0.0.1", 5672):
        yield "amqp://guest:guest@127.0.0.1:5672/"
        return
    if _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield f"amqp://guest:guest@{host}:{port}/"
        return
    pytest.fail(HOW_TO_GET_A_BROKER, pytrace=False)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis: RABBITWORKER_TEST_REDIS_URL, 127.0.0.1:6379, testcontainers."""
    url = os.environ.get("RABBITWORKER_TEST_REDIS_URL")
    if url:
        yield url
    elif _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
    elif _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    else:
        pytest.fail(
            "no Redis for the tests: set RABBITWORKER_TEST_REDIS_URL, start one on "
            "127.0.0.1:6379 (`redis-server --daemonize yes`), or start Docker",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL: RABBITWORKER_TEST_POSTGRES_URL, 127.0.0.1:5432 (database `test`),
    testcontainers."""
    url = os.environ.get("RABBITWORKER_TEST_POSTGRES_URL")
    if url:
        yield url
    elif _port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/test"
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
    else:
        pytest.fail(
            "no PostgreSQL for the tests: set RABBITWORKER_TEST_POSTGRES_URL, start one on "
            "127.0.0.1:5432 with a database `test`, or start Docker",
            pytrace=False,
        )


@pytest.fixture
def prefix() -> str:
    """A unique name prefix, so tests never see each other's messages."""
    return f"rwt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def amqp(broker_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    """A raw aio-pika connection, for publishing by hand and inspecting queues."""
    connection = await aio_pika.connect_robust(broker_url)
    yield connection
    await connection.close()


async def delete_topology(url: str, exchange: str, queues: list[str]) -> None:
    """Delete an app's exchanges and queues, including expiring retry/delay ones."""
    connection = await aio_pika.connect(url)
    try:
        names: list[str] = []
        for q in queues:
            names += [q, f"{q}.dlq", suspect_queue_name(q)]
            names += [retry_queue_name(q, ms) for ms in _known_delays()]
        names += [delay_queue_name(exchange, ms) for ms in _known_delays()]
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
        for ex in (exchange, f"{exchange}.retry", f"{exchange}.dlx", f"{exchange}.delay"):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(ex)
            except Exception:
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


@pytest.fixture
async def beat_app_cleanup(broker_url: str, prefix: str) -> AsyncIterator[None]:
    """Deletes what tests/apps/beat_app.py declares, its beat's state queues included."""
    yield
    exchange = f"{prefix}.x"
    await delete_topology(broker_url, exchange, [f"{prefix}.ticks", f"{prefix}.reports"])
    connection = await aio_pika.connect(broker_url)
    async with connection:
        for schedule in ("tick", "nightly-report"):
            channel = await connection.channel()
            await channel.queue_delete(beat_state_queue_spec(exchange, schedule).name)


_DELAYS: set[int] = set()


def _known_delays() -> set[int]:
    return _DELAYS


def remember_delay(ms: int) -> None:
    _DELAYS.add(ms)


def remember_app_delays(app: App) -> None:
    """Note the retry delays of an app's tasks, so their retry queues get deleted."""
    for tasks in app.registry.tasks.values():
        for task in tasks.values():
            _DELAYS.update(task.retry.steps_ms())


@pytest.fixture
async def make_app(broker_url: str, prefix: str) -> AsyncIterator[Callable[..., App]]:
    """Factory: `make_app(**options)` builds an App on a unique exchange; its
    topology is deleted after the test."""
    apps: list[App] = []

    def factory(name: str = "test", **options: Any) -> App:
        options.setdefault("exchange", f"{prefix}.x")
        app = App(name, url=broker_url, **options)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.close()
        remember_app_delays(app)
        await delete_topology(broker_url, app.exchange, app.queues)


@pytest.fixture
async def proxy(broker_url: str) -> AsyncIterator[Proxy]:
    """A loopback TCP proxy in front of the broker that the test can `cut()` and
    `restore()`; `proxy.url(broker_url)` is the broker URL through it."""
    async with Proxy.to(broker_url) as running:
        yield running


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Factory: `await start_worker(app, **options)` runs a worker in this process
    until the end of the test."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def factory(app: App, **options: Any) -> Worker:
        options.setdefault("grace", 5)
        worker = Worker(app, **options)
        task = asyncio.create_task(worker.run(handle_signals=False))
        running.append((worker, task))
        await eventually(lambda: worker.consuming or task.done(), timeout=15)
        if task.done():
            task.result()
        return worker

    yield factory
    for worker, task in running:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


def unavailable(message: str) -> NoReturn:
    """A tool or service a test needs is missing: a failure on CI (CI=true), where
    `.ci/run` provides everything; elsewhere the test is skipped, saying why."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
) -> None:
    """Poll `predicate` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def queue_depth(connection: aio_pika.abc.AbstractConnection, name: str) -> int:
    """Messages ready in a queue (not counting unacknowledged ones), by passive declare."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def get_all(
    connection: aio_pika.abc.AbstractConnection, name: str
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take (and ack) every message ready in a queue."""
    channel = await connection.channel()
    out = []
    try:
        queue = await channel.declare_queue(name, passive=True)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
    finally:
        await channel.close()
    return out


class WorkerProcess:
    """`rabbitworker run` as a subprocess, with its output captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rabbitworker", *args],
            env=env,
            cwd=str(APPS),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_consuming(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while "worker consuming" not in self.output:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.output}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


@pytest.fixture
def worker_process(
    broker_url: str, prefix: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: `worker_process(*args)` runs `python -m rabbitworker run ...` with
    RW_TEST_PREFIX and RW_TEST_RECORD set for the apps in tests/apps."""
    procs: list[WorkerProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        full_env = {
            **os.environ,
            "RABBITWORKER_URL": broker_url,
            "RW_TEST_PREFIX": prefix,
            "RW_TEST_RECORD": str(tmp_path / "handled.txt"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
            **(env or {}),
        }
        proc = WorkerProcess(["run", *args], full_env, tmp_path / f"worker{len(procs)}.log")
        procs.append(proc)
        return proc

    yield factory
    for proc in procs:
        proc.stop()


def read_record(tmp_path: Path) -> list[list[str]]:
    """The lines handlers in tests/apps wrote to RW_TEST_RECORD, split on spaces."""
    path = tmp_path / "handled.txt"
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def app_module(
    broker_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Any]]:
    """Factory: `app_module("rpc_math")` imports a module of tests/apps afresh with
    this test's prefix, points its `app` at the test broker, and deletes that app's
    topology after the test (so a worker subprocess can run the same module)."""
    import importlib

    monkeypatch.setenv("RW_TEST_PREFIX", prefix)
    monkeypatch.setenv("RW_TEST_RECORD", str(tmp_path / "handled.txt"))
    monkeypatch.syspath_prepend(str(APPS))
    loaded: list[Any] = []

    def factory(name: str) -> Any:
        for mod in (name, "recording"):
            sys.modules.pop(mod, None)
        module = importlib.import_module(name)
        module.app.configure(url=broker_url)
        loaded.append(module)
        return module

    yield factory
    for module in loaded:
        app = module.app
        remember_app_delays(app)
        # A thread of its own: this teardown may run for a sync or an async test.
        cleanup = threading.Thread(
            target=asyncio.run,
            args=(delete_topology(broker_url, app.exchange, app.queues),),
        )
        cleanup.start()
        cleanup.join()
        sys.modules.pop(module.__name__, None)
    sys.modules.pop("recording", None)
