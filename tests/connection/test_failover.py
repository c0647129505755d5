"""Several hosts in one broker URL, on the shared broker behind two loopback proxies (one
per "node"): a dead host is skipped, hosts are tried in a shuffled order, and a worker
whose host goes away reconnects to the other, saying so once."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from support import eventually
from support.proxy import Proxy

from rabbitworker import App, Context, TaskMessage
from rabbitworker._amqp import connection, failover
from rabbitworker.errors import NotConfirmed
from rabbitworker.urls import parse_broker_url
from rabbitworker.wire import Properties


def dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def hosts_url(*ports: int) -> str:
    return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/"


@pytest.fixture
async def second_proxy(broker_url: str) -> AsyncIterator[Proxy]:
    async with Proxy.to(broker_url) as running:
        yield running


@pytest.fixture
def hosts_in_given_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosts tried in the order written, so a test knows which one comes first."""
    monkeypatch.setattr(connection, "host_order", lambda url: list(range(len(url.hosts))))


def test_hosts_are_tried_in_a_shuffled_order_that_differs_between_clients() -> None:
    url = parse_broker_url(hosts_url(5001, 5002, 5003))
    rng = random.Random(7)
    orders = [failover.host_order(url, rng=rng) for _ in range(60)]
    assert all(sorted(order) == [0, 1, 2] for order in orders)
    assert {order[0] for order in orders} == {0, 1, 2}  # each host is someone's first


@pytest.mark.usefixtures("hosts_in_given_order")
async def test_a_url_with_one_dead_and_one_live_host_connects_and_publishes(
    make_app: Callable[..., App], broker_url: str, prefix: str, proxy: Proxy
) -> None:
    app = make_app("producer", connect_timeout=5)
    app.configure(url=hosts_url(dead_port(), proxy.port))

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        n: int

    @app.task(queue=f"{prefix}.pings")
    async def ping(msg: Ping) -> None: ...

    async with app:
        assert await app.publish(Ping(n=1))
    assert proxy.accepted >= 1


async def test_every_host_dead_fails_naming_every_host_with_the_password_masked(
    make_app: Callable[..., App],
) -> None:
    from rabbitworker.errors import ConnectionFailed

    app = make_app("producer", connect_timeout=0.5)
    ports = dead_port(), dead_port()
    app.configure(url=f"amqp://guest:s3cret@127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/")
    with pytest.raises(ConnectionFailed) as failed:
        async with app:
            pass
    message = str(failed.value)
    assert f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}" in message
    assert "s3cret" not in message


@pytest.mark.usefixtures("hosts_in_given_order")
async def test_a_worker_whose_host_goes_away_reconnects_to_the_other_and_logs_it_once(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    proxy: Proxy,
    second_proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app("worker")
    app.configure(url=hosts_url(proxy.port, second_proxy.port))
    producer = make_app("producer")
    handled: list[int] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=f"{prefix}.jobs")
    async def work(msg: Job, ctx: Context) -> None:
        handled.append(msg.n)

    producer.register(Job)
    await start_worker(app)
    assert proxy.connections >= 1 and second_proxy.accepted == 0
    proxy.cut(down="refuse")  # the first "node" dies and stays down
    async with producer:
        await producer.publish(Job(n=1))
        await eventually(lambda: handled == [1], timeout=10)
    assert second_proxy.connections >= 1

    def reconnected() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("reconnected to")]

    # Said once every channel is restored, which may be just after the first delivery.
    await eventually(lambda: bool(reconnected()), timeout=10)
    lost = [r for r in caplog.records if " lost (" in r.getMessage()]
    back = reconnected()
    assert len(lost) == 1 and f"127.0.0.1:{proxy.port} lost" in lost[0].getMessage()
    assert len(back) == 1 and f"reconnected to 127.0.0.1:{second_proxy.port} after" in (
        back[0].getMessage()
    )
    noise = [r for r in caplog.records if r.name.startswith(("aio_pika", "aiormq"))]
    assert [r.getMessage() for r in noise if r.levelno >= logging.WARNING] == []


@pytest.mark.usefixtures("hosts_in_given_order")
async def test_a_publisher_whose_host_goes_away_publishes_through_the_other_without_a_failure(
    make_app: Callable[..., App],
    prefix: str,
    proxy: Proxy,
    second_proxy: Proxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rabbitworker.publisher")
    app = make_app("producer", publish_timeout=10)
    app.configure(url=hosts_url(proxy.port, second_proxy.port))

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=f"{prefix}.jobs")
    async def work(msg: Job) -> None: ...

    async with app:
        first = [asyncio.create_task(app.publish(Job(n=i))) for i in range(200)]
        await asyncio.sleep(0)  # let them start: some are waiting for a confirm at the cut
        proxy.cut(down="refuse")
        rest = [asyncio.create_task(app.publish(Job(n=i))) for i in range(200, 400)]
        results = await asyncio.gather(*first, *rest, return_exceptions=True)
        await eventually(lambda: "reconnected to" in caplog.text, timeout=10)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert failed == []
    assert second_proxy.accepted >= 1
    # The outage in two lines, not one per waiting publish.
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 2, loud
    assert loud[0].startswith(f"connection to 127.0.0.1:{proxy.port} lost")
    assert loud[1].startswith(f"reconnected to 127.0.0.1:{second_proxy.port} after")


async def test_a_publish_the_broker_keeps_nacking_is_sent_again_until_publish_timeout(
    make_app: Callable[..., App], prefix: str, amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    queue = f"{prefix}.full"  # takes nothing: every publish to it is nacked
    channel = await amqp.channel()
    await channel.declare_queue(
        queue, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    app = make_app("producer", publish_timeout=1.0)
    try:
        async with app:
            started = time.monotonic()
            # Nacked until the deadline: the last try may also run out of time.
            with pytest.raises(NotConfirmed, match=r"refused the message \(nack\)|in time"):
                await app.transport.send("", queue, b"{}", Properties(message_id="m1"))
            took = time.monotonic() - started
            # It waited out the publish timeout, and the channel still publishes after.
            assert 0.9 < took < 3
            await app.transport.send("", "", b"{}", Properties(), mandatory=False)
    finally:
        await channel.queue_delete(queue)
        await channel.close()
