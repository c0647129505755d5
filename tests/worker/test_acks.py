"""Coalesced acks: finished deliveries are acknowledged together, and a delivery whose
handler has not finished is never covered by a multiple ack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from support import eventually, queue_depth

from rabbitworker import App, Context, TaskMessage
from rabbitworker._amqp import acks
from rabbitworker._amqp.acks import AckBatcher, batch_for


class FakeChannel:
    """Records the acks it is asked to send, as the broker would see them."""

    def __init__(self) -> None:
        self.is_closed = False
        self.frames: list[tuple[int, bool]] = []
        self.nacked: list[int] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append((tag, multiple))

    async def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.nacked.append(tag)

    def acked(self) -> set[int]:
        """Every tag the recorded frames acknowledge, given all tags 1..max were delivered."""
        out: set[int] = set()
        for tag, multiple in self.frames:
            out |= set(range(1, tag + 1)) if multiple else {tag}
        return out


class FakeMessage:
    """What the batcher reads of a `Delivery`: its tag, channel and queue."""

    queue = "q"

    def __init__(self, channel: FakeChannel, tag: int) -> None:
        self.channel = channel
        self.tag = tag


async def test_acks_finished_in_one_turn_of_the_loop_go_out_as_one_multiple_ack() -> None:
    channel, batcher = FakeChannel(), AckBatcher()
    messages: list[Any] = [FakeMessage(channel, tag) for tag in range(1, 51)]
    await asyncio.gather(*(batcher.ack(m) for m in messages))
    assert channel.frames == [(50, True)]


async def test_acks_finishing_over_several_turns_wait_for_a_batch_of_a_quarter_prefetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A linger long enough that 25 turns of the loop always fit in it, even under
    # coverage on a busy machine: the batches are then decided by count alone.
    monkeypatch.setattr(acks, "LINGER_S", 0.5)
    assert (batch_for(100), batch_for(1000), batch_for(8), batch_for(2)) == (25, 25, 2, 1)
    channel, batcher = FakeChannel(), AckBatcher()
    batcher.expect("q", 100)
    messages: list[Any] = [FakeMessage(channel, tag) for tag in range(1, 61)]
    acking = []
    loop = asyncio.get_running_loop()
    for m in messages:  # one handler finishing per turn of the loop
        acking.append(asyncio.ensure_future(batcher.ack(m)))
        await asyncio.sleep(0)
    started = loop.time()
    await asyncio.gather(*acking)
    # 25 and 50 in one frame each; the last 10 once the linger has passed.
    assert channel.frames == [(25, True), (50, True), (60, True)]
    assert loop.time() - started >= 0.4
    # That linger ended short of a batch: for QUIET_S the acks go out at once.
    started = loop.time()
    await batcher.ack(FakeMessage(channel, 61))  # type: ignore[arg-type]
    assert channel.frames[-1] == (61, True)
    assert loop.time() - started < 0.25


async def test_after_quiet_s_a_flush_lingers_for_a_batch_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(acks, "LINGER_S", 0.2)
    monkeypatch.setattr(acks, "QUIET_S", 0.3)
    channel, batcher = FakeChannel(), AckBatcher()
    batcher.expect("q", 100)
    loop = asyncio.get_running_loop()
    await batcher.ack(FakeMessage(channel, 1))  # type: ignore[arg-type]  # lingers, alone
    quiet_from = loop.time()
    await batcher.ack(FakeMessage(channel, 2))  # type: ignore[arg-type]  # quiet: at once
    assert loop.time() - quiet_from < 0.15
    await eventually(lambda: loop.time() - quiet_from > 0.3)
    started = loop.time()
    await batcher.ack(FakeMessage(channel, 3))  # type: ignore[arg-type]  # lingers again
    assert loop.time() - started >= 0.15
    assert channel.frames == [(1, True), (2, True), (3, True)]


async def test_a_delivery_still_being_handled_is_never_covered_by_a_multiple_ack() -> None:
    channel, batcher = FakeChannel(), AckBatcher()
    messages: list[Any] = [FakeMessage(channel, tag) for tag in range(1, 11)]
    # 1 and 6 are still running; the others finish.
    await asyncio.gather(*(batcher.ack(m) for m in messages if m.tag not in (1, 6)))
    assert channel.acked() == {2, 3, 4, 5, 7, 8, 9, 10}
    await batcher.ack(messages[0])
    assert channel.acked() == {1, 2, 3, 4, 5, 7, 8, 9, 10}
    # Nothing sent while 6 was running covers it.
    assert all(not multiple or tag < 6 for tag, multiple in channel.frames)
    await batcher.nack(messages[5])
    assert channel.nacked == [6]
    more: list[Any] = [FakeMessage(channel, tag) for tag in range(11, 14)]
    await asyncio.gather(*(batcher.ack(m) for m in more))
    # With 6 returned, the run 7..13 is settled: 11..13 go out as one frame.
    assert channel.frames[-1] == (13, True)


async def test_acks_that_finish_while_a_write_waits_follow_it_and_never_ack_a_tag_twice() -> None:
    channel, batcher = FakeChannel(), AckBatcher()
    gate, held = asyncio.Event(), asyncio.Event()
    writes: list[int] = []
    record = channel.basic_ack

    async def held_ack(tag: int, multiple: bool = False, wait: bool = True) -> None:
        writes.append(tag)
        held.set()
        await gate.wait()  # a full frame buffer
        await record(tag, multiple, wait)

    channel.basic_ack = held_ack  # type: ignore[method-assign]
    first: list[Any] = [FakeMessage(channel, tag) for tag in range(1, 4)]
    second: list[Any] = [FakeMessage(channel, tag) for tag in range(4, 6)]
    acking = [asyncio.ensure_future(batcher.ack(m)) for m in first]
    await held.wait()
    acking += [asyncio.ensure_future(batcher.ack(m)) for m in second]
    await eventually(lambda: batcher.pending == 2)
    assert writes == [3]  # the later acks wait for the held write, not overtake it
    gate.set()
    await asyncio.gather(*acking)
    assert channel.frames == [(3, True), (5, True)]


class Job(TaskMessage, routing_key="acks.job"):
    n: int


async def test_only_the_unfinished_message_goes_back_when_the_connection_drops(
    make_app: Callable[..., App], start_worker: Any, amqp: Any, prefix: str
) -> None:
    app = make_app()
    queue = f"{prefix}.acks"
    release = asyncio.Event()
    handled: list[int] = []

    @app.task(queue=queue)
    async def handle(msg: Job, ctx: Context) -> None:
        if msg.n == 0:
            await release.wait()
        handled.append(msg.n)

    async with app:
        for n in range(50):
            await app.publish(Job(n=n))
    worker = await start_worker(app, concurrency=100, prefetch=100)
    await eventually(lambda: len(handled) == 49, timeout=20)
    # The acks of a batch are written at most LINGER_S after its handlers finish.
    transport: Any = app.transport  # the AMQP transport: its acks and connection
    acks = transport.acks
    await eventually(lambda: worker.stats().handled == 49 and acks.pending == 0, timeout=5)
    await transport.connection.close()  # unacknowledged deliveries go back to the queue

    async def only_the_blocked_one_is_back() -> bool:
        return await queue_depth(amqp, queue) == 1

    await eventually(only_the_blocked_one_is_back, timeout=10)
    release.set()
    assert sorted(handled) == list(range(1, 50))


async def test_a_batch_never_waits_for_more_than_a_quarter_of_the_handlers_at_once(
    make_app: Callable[..., App], start_worker: Any, prefix: str
) -> None:
    # With 2 handlers at once and a prefetch of 100, waiting for 25 finished ones would
    # hold both slots for LINGER_S after every pair: the batch follows the handlers.
    app = make_app()
    done: list[int] = []

    @app.task(queue=f"{prefix}.few")
    async def few(msg: Job) -> None:
        done.append(msg.n)

    async with app:
        for n in range(20):
            await app.publish(Job(n=n))
    await start_worker(app, concurrency=2, prefetch=100)
    await eventually(lambda: len(done) == 20, timeout=20)
    transport: Any = app.transport
    assert transport.acks._batches[f"{prefix}.few"] == 1
