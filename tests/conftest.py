"""Fixtures: find a real RabbitMQ (and Redis, PostgreSQL), give every test its own
exchange and queues, and clean them up afterwards. Helpers live in tests/support/."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from support import (
    APPS,
    ROOT,
    WorkerProcess,
    delete_topology,
    eventually,
    remember_app_delays,
)
from support.nodes import (  # noqa: F401  (fixtures for extra RabbitMQ nodes and a cluster)
    make_rabbit_node,
    rabbit_cluster,
    rabbit_cluster_for_module,
    rabbit_node,
)
from support.proxy import Proxy

from rabbitworker import App, Worker
from rabbitworker.topology import beat_state_queue_spec

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
        await eventually(lambda: worker.stats().consuming or task.done(), timeout=15)
        if task.done():
            task.result()
        return worker

    yield factory
    for worker, task in running:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


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
