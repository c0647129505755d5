"""Failover on a 3-node RabbitMQ cluster of our own (tests/support/nodes.py): a worker whose node
is killed resumes consuming from a surviving node, and a publisher whose node is killed
loses no publish. Marked `cluster`: `make cluster-test` runs them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from support import eventually, queue_depth
from support.nodes import RabbitCluster, RabbitNode

from rabbitworker import App, Context, TaskMessage
from rabbitworker._amqp import connection

pytestmark = pytest.mark.cluster


@pytest.fixture
def hosts_in_given_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts tried in the order written, so a test knows which node a client is on."""
    monkeypatch.setattr(connection, "host_order", lambda url: list(range(len(url.hosts))))


@pytest.fixture
async def cluster_app(
    rabbit_cluster: RabbitCluster, prefix: str
) -> AsyncIterator[Callable[..., App]]:
    """Factory: `cluster_app(name, url=None, **settings)`, an App on the cluster (by
    default through the URL naming all three nodes), closed after the test."""
    apps: list[App] = []

    def factory(name: str, url: str | None = None, **settings: Any) -> App:
        app = App(name, url=url or rabbit_cluster.multi_host_url, exchange=f"{prefix}.x")
        app.configure(**settings)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        await app.close()


async def kill(node: RabbitNode) -> float:
    """SIGKILL `node`; returns the monotonic time of the kill."""
    killed_at = time.monotonic()
    await asyncio.to_thread(node.kill)
    return killed_at


@pytest.mark.usefixtures("hosts_in_given_order")
async def test_a_worker_resumes_consuming_within_5_s_when_its_node_is_killed(
    rabbit_cluster: RabbitCluster,
    cluster_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
) -> None:
    first, _, third = rabbit_cluster.nodes
    worker_app = cluster_app("worker")  # on node 1, which also leads the queue it declares
    producer = cluster_app("producer", url=third.url)  # never killed

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    handled: dict[int, float] = {}

    @worker_app.task(queue=f"{prefix}.jobs")
    async def work(msg: Job, ctx: Context) -> None:
        handled.setdefault(msg.n, time.monotonic())

    producer.register(Job)
    await start_worker(worker_app)
    assert rabbit_cluster.leader_of(f"{prefix}.jobs") is first
    published: list[int] = []
    killed_at: float | None = None
    async with producer:
        for n in range(400):  # a steady stream, 50 a second, for 8 s
            if n == 100:
                killed_at = await kill(first)
            await producer.publish(Job(n=n))
            published.append(n)
            await asyncio.sleep(0.02)
        await eventually(lambda: set(handled) >= set(published), timeout=30)
    assert killed_at is not None
    resumed = min(at for at in handled.values() if at > killed_at) - killed_at
    print(f"\nfirst message handled {resumed:.2f} s after the kill of the worker's node")
    assert resumed < 5


@pytest.mark.usefixtures("hosts_in_given_order")
async def test_a_publisher_whose_node_is_killed_fails_no_publish(
    rabbit_cluster: RabbitCluster, cluster_app: Callable[..., App], prefix: str
) -> None:
    first, second, _ = rabbit_cluster.nodes
    publish_timeout = 20.0
    app = cluster_app("producer", publish_timeout=publish_timeout)  # on node 1

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    queue = f"{prefix}.jobs"

    @app.task(queue=queue)
    async def work(msg: Job) -> None: ...

    failures: list[BaseException] = []
    confirmed: set[int] = set()

    async def publish(n: int) -> None:
        try:
            await app.publish(Job(n=n))
            confirmed.add(n)
        except Exception as exc:
            failures.append(exc)

    async with app:
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for n in range(3000):  # 20 at a time, some always waiting for a confirm
            if n == 500:
                await kill(first)
            pending.add(asyncio.create_task(publish(n)))
            if len(pending) >= 20:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
        took = time.monotonic() - started
    print(f"\n3000 publishes across the kill of the publisher's node in {took:.1f} s")
    assert [str(f) for f in failures] == []
    assert confirmed == set(range(3000))
    async with await aio_pika.connect(second.url) as reader:
        # Every confirmed publish is in the queue: duplicates allowed, never fewer.
        depth = await queue_depth(reader, queue)
    print(f"queue depth {depth}: {depth - 3000} duplicates")
    assert depth >= 3000
