"""`rabbitworker run` as a subprocess against a real broker."""

from __future__ import annotations

import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from support import APPS, eventually, queue_depth, read_record

sys.path.insert(0, str(APPS))


@pytest.fixture
def two_queues(prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The tests/apps/two_queues module, imported with this test's prefix."""
    monkeypatch.setenv("RW_TEST_PREFIX", prefix)
    monkeypatch.setenv("RW_TEST_RECORD", str(tmp_path / "handled.txt"))
    for mod in ("two_queues", "recording"):
        sys.modules.pop(mod, None)
    import two_queues

    yield two_queues
    for mod in ("two_queues", "recording"):
        sys.modules.pop(mod, None)


@pytest.fixture
async def connected(two_queues, broker_url: str):  # type: ignore[no-untyped-def]
    from support import delete_topology

    app = two_queues.app
    app.configure(url=broker_url)
    async with app:
        yield app
    await delete_topology(broker_url, app.exchange, app.queues)


async def test_a_thousand_messages_of_two_types_are_each_handled_once_by_the_right_handler(
    two_queues: Any,
    connected: Any,
    worker_process: Any,
    amqp: Any,
    tmp_path: Path,
    prefix: str,
) -> None:
    m = two_queues
    ids = {}
    for i in range(500):
        ids[await connected.publish(m.Alpha(n=i))] = ("alpha", i)
        ids[await connected.publish(m.Beta(n=i))] = ("beta", i)
    worker = worker_process("--app", "two_queues:app", "--queues", f"{m.name('a')},{m.name('b')}")
    await eventually(lambda: len(read_record(tmp_path)) >= 1000, timeout=60)
    assert worker.stop() == 0
    lines = read_record(tmp_path)
    counts = Counter(line[2] for line in lines)
    assert len(lines) == 1000
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    for kind, n, message_id, _pid in lines:
        assert ids[message_id] == (kind, int(n))

    # Both queues are durable quorum queues: redeclaring them as such succeeds,
    # and declaring them classic is refused by the broker.
    for q in (m.name("a"), m.name("b")):
        channel = await amqp.channel()
        await channel.declare_queue(q, durable=True, passive=True)
        spec = next(s for s in connected.topology().queues if s.name == q)
        await channel.declare_queue(q, durable=True, arguments=spec.arguments)
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(
                q, durable=True, arguments={**spec.arguments, "x-queue-type": "classic"}
            )
        channel = await amqp.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(q, durable=False, arguments=spec.arguments)


async def test_a_message_stays_unacked_while_its_handler_works_and_comes_back_after_sigkill(
    two_queues: Any, connected: Any, worker_process: Any, amqp: Any, tmp_path: Path
) -> None:
    m = two_queues
    queue = m.name("a")
    message_id = await connected.publish(m.Block(n=1))
    first = worker_process("--app", "two_queues:app", "--queues", queue)
    await eventually(
        lambda: any(line[0] == "block-start" for line in read_record(tmp_path)), timeout=20
    )
    # Delivered but not acked: nothing ready in the queue, and the broker still holds it.
    assert await queue_depth(amqp, queue) == 0
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)

    async def back_in_queue() -> bool:
        return await queue_depth(amqp, queue) == 1

    await eventually(back_in_queue, timeout=20)
    release = tmp_path / "release"
    release.touch()
    second = worker_process(
        "--app", "two_queues:app", "--queues", queue, env={"RW_TEST_RELEASE": str(release)}
    )
    await eventually(
        lambda: any(line[0] == "block-done" for line in read_record(tmp_path)), timeout=20
    )
    assert second.stop() == 0
    starts = [line for line in read_record(tmp_path) if line[0] == "block-start"]
    assert [line[2] for line in starts] == [message_id, message_id]
    assert starts[0][3] != starts[1][3]  # handled by two different processes
    assert await queue_depth(amqp, queue) == 0
