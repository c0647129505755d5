"""The node harness: a standalone node of our own, a 3-node cluster that survives the kill
of a quorum queue's leader, and the clean-up of nodes left behind by a dead test run."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import aio_pika
import pytest
import support.nodes as nodes
from support import eventually
from support.nodes import NodeError, RabbitCluster, RabbitNode, stop_harness_nodes


@contextmanager
def step(what: str) -> Iterator[None]:
    """Print how long `what` took (shown with `pytest -s`)."""
    started = time.monotonic()
    yield
    print(f"\n{what}: {time.monotonic() - started:.1f} s", end="")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def led_by_another(cluster: RabbitCluster, queue: str, node: RabbitNode) -> bool:
    try:
        return cluster.leader_of(queue) is not node
    except NodeError:
        return False  # between leaders


async def test_a_standalone_node_is_a_broker_of_its_own_and_leaves_nothing_when_stopped(
    make_rabbit_node: Callable[..., RabbitNode], broker_url: str, prefix: str
) -> None:
    with step("start 1 node"):
        node = await asyncio.to_thread(make_rabbit_node, {"consumer_timeout": 123000})
    assert node.is_running()
    assert (
        await asyncio.to_thread(node.ctl, "eval", "application:get_env(rabbit, consumer_timeout).")
        == "{ok,123000}\n"
    )
    with step("connect and declare a queue"):
        async with await aio_pika.connect(node.url) as connection:
            channel = await connection.channel()
            await channel.declare_queue(f"{prefix}.own", durable=True)
    async with await aio_pika.connect(broker_url) as shared:
        channel = await shared.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(f"{prefix}.own", passive=True)
    with step("graceful stop"):
        await asyncio.to_thread(node.stop)
    assert not node.is_running()
    assert not port_open(node.amqp_port)
    assert not node.home.exists()


@pytest.mark.parametrize(
    "rabbit_node", [{"vm_memory_high_watermark.relative": 0.0001}], indirect=True
)
async def test_settings_given_to_the_node_fixture_apply_so_a_memory_alarm_can_be_raised(
    rabbit_node: RabbitNode,
) -> None:
    alarms = await asyncio.to_thread(rabbit_node.ctl, "eval", "rabbit_alarm:get_alarms().")
    assert "memory" in alarms


@pytest.mark.cluster
async def test_a_quorum_queue_outlives_the_kill_of_its_leader_which_then_rejoins(
    rabbit_cluster: RabbitCluster, prefix: str
) -> None:
    cluster = rabbit_cluster
    first, second, _ = cluster.nodes
    names = {node.name for node in cluster.nodes}
    with step("cluster_status"):
        assert await asyncio.to_thread(cluster.running_nodes) == names
    queue = f"{prefix}.quorum"
    with step("declare a quorum queue through node 1"):
        async with await aio_pika.connect(first.url) as connection:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    assert await asyncio.to_thread(cluster.leader_of, queue) is first
    assert {n.name for n in await asyncio.to_thread(cluster.members_of, queue)} == names

    with step("kill the leader"):
        await asyncio.to_thread(first.kill)
    assert not first.is_running()
    assert not port_open(first.amqp_port)
    with step("a new leader is reported"):
        await eventually(
            lambda: asyncio.to_thread(led_by_another, cluster, queue, first), timeout=30
        )
    # Publishing before that is nacked at once (the dead leader is still on record).
    with step("publish and get through node 2"):
        async with await aio_pika.connect(second.url) as connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(b"after the kill"), routing_key=queue, timeout=30
            )
            declared = await channel.declare_queue(queue, passive=True)
            message = await declared.get(no_ack=True, timeout=30)
    assert message.body == b"after the kill"

    with step("restart the killed node"):
        await asyncio.to_thread(first.restart)
    with step("cluster_status shows it back"):
        await eventually(
            lambda: asyncio.to_thread(lambda: cluster.running_nodes() == names), timeout=60
        )
    assert {n.name for n in await asyncio.to_thread(cluster.members_of, queue)} == names
    async with await aio_pika.connect(first.url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)


@pytest.mark.cluster
def test_heal_brings_back_a_member_stopped_with_its_data_removed(
    rabbit_cluster: RabbitCluster,
) -> None:
    names = {node.name for node in rabbit_cluster.nodes}
    third = rabbit_cluster.nodes[2]
    with step("graceful stop of a member"):
        third.stop()
    assert not third.home.exists()
    assert rabbit_cluster.running_nodes() == names - {third.name}
    with step("heal: forget, start afresh, join"):
        rabbit_cluster.heal()
    assert rabbit_cluster.running_nodes() == names


def test_nodes_of_a_dead_test_run_are_cleaned_up_and_live_ones_are_not(
    rabbit_node: RabbitNode,
) -> None:
    orphan = RabbitCluster(1)
    with step("start another node"):
        orphan.start()
    try:
        # Now owned by our pid with another start time: a run that is gone, whose pid was
        # given out again. (Marked only now, or another test run could sweep it mid-start.)
        manifest = orphan.home / "cluster.json"
        manifest.write_text(manifest.read_text().replace(orphan.owner, f"{os.getpid()}:0"))
        with step("stop stale nodes"):
            stopped = stop_harness_nodes()
        assert rabbit_node.name not in stopped
        assert rabbit_node.is_running()
        assert not orphan.nodes[0].is_running()
        assert not orphan.home.exists()
    finally:
        orphan.stop()


@pytest.mark.parametrize("ci", ["true", None])
def test_without_rabbitmq_server_the_fixtures_fail_saying_how_to_install_it(
    ci: str | None, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    def not_installed(name: str) -> str:
        raise NodeError(nodes.HOW_TO_INSTALL)

    monkeypatch.setattr(nodes, "_script", not_installed)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install rabbitmq-server"):
        request.getfixturevalue("make_rabbit_node")
