"""Delayed publishing: `publish(msg, delay=...)` parks the message in a broker-side
delay queue (`<exchange>.delay.<ms>`), one per distinct rounded delay, so a long
delay never holds up a short one and no message waits in worker memory."""

import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from support import eventually, queue_depth, remember_delay

from rabbitworker import App, Context, TaskMessage
from rabbitworker.errors import UnroutableError
from rabbitworker.topology import delay_queue_name, quantize_delay_ms

TOLERANCE = 0.02


def test_delays_under_a_tenth_of_a_second_keep_millisecond_precision() -> None:
    assert [quantize_delay_ms(s) for s in (0.0001, 0.001, 0.037, 0.099)] == [1, 1, 37, 99]


def test_longer_delays_round_up_to_two_significant_digits_of_milliseconds() -> None:
    assert quantize_delay_ms(1) == 1000
    assert quantize_delay_ms(1.234) == 1300
    assert quantize_delay_ms(0.37) == 370
    assert quantize_delay_ms(12.01) == 13_000
    assert quantize_delay_ms(3600) == 3_600_000
    assert quantize_delay_ms(86_400 * 7 + 1) == 610_000_000


def test_a_rounded_delay_is_never_shorter_and_at_most_a_tenth_longer() -> None:
    for ms in [*range(1, 5000), *range(5000, 10**7, 997)]:
        rounded = quantize_delay_ms(ms / 1000)
        assert ms <= rounded, ms
        assert rounded - ms <= max(1, math.ceil(ms / 10)), ms


def test_every_delay_up_to_a_day_needs_at_most_ninety_queues_per_power_of_ten() -> None:
    day_ms = 86_400_000
    # Every millisecond below 100, then each decade sampled finer than its grid.
    samples = [*range(1, 100)]
    for power in range(2, 8):
        samples += range(10**power, min(10 ** (power + 1), day_ms + 1), max(1, 10 ** (power - 3)))
    distinct = {quantize_delay_ms(ms / 1000) for ms in samples}
    decades = math.ceil(math.log10(day_ms))  # 1 ms ... 100 000 000 ms
    assert len(distinct) <= 90 * decades + 10
    assert len([d for d in distinct if 1000 <= d < 10_000]) == 90


async def test_a_message_published_with_a_delay_is_handled_no_earlier_than_the_delay(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    handled: list[tuple[float, int]] = []
    remember_delay(1000)

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        n: int

    @app.task(queue=f"{prefix}.pings")
    async def ping(msg: Ping, ctx: Context) -> None:
        handled.append((time.monotonic(), ctx.attempt))

    await start_worker(app)
    started = time.monotonic()
    await app.publish(Ping(n=1), delay=1)
    # Parked in the broker, not in the worker: the delay queue holds it.
    assert await queue_depth(amqp, delay_queue_name(app.exchange, 1000)) == 1
    assert handled == []
    await eventually(lambda: bool(handled))
    assert handled[0][0] - started >= 1.0 - TOLERANCE
    assert handled[0][1] == 1


async def test_a_long_delay_published_first_does_not_hold_up_a_short_one(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    handled: list[int] = []
    remember_delay(30_000)
    remember_delay(1000)

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        n: int

    @app.task(queue=f"{prefix}.pings")
    async def ping(msg: Ping) -> None:
        handled.append(msg.n)

    await start_worker(app)
    await app.publish(Ping(n=30), delay=timedelta(seconds=30))
    started = time.monotonic()
    await app.publish(Ping(n=1), delay=1)
    await eventually(lambda: bool(handled), timeout=10)
    assert handled == [1]
    assert time.monotonic() - started >= 1.0 - TOLERANCE
    # The 30 s message is still parked in its own queue.
    long_queue = delay_queue_name(app.exchange, 30_000)
    assert await queue_depth(amqp, long_queue) == 1
    channel = await amqp.channel()
    await channel.queue_delete(long_queue)
    await channel.close()
    assert handled == [1]


async def test_an_arbitrary_delay_uses_its_rounded_queue_and_is_honoured(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    handled: list[float] = []
    remember_delay(440)

    class Ping(TaskMessage, routing_key=f"{prefix}.ping"):
        n: int

    @app.task(queue=f"{prefix}.pings")
    async def ping(msg: Ping) -> None:
        handled.append(time.monotonic())

    await start_worker(app)
    started = time.monotonic()
    await app.publish(Ping(n=1), delay=0.437)
    assert await queue_depth(amqp, delay_queue_name(app.exchange, 440)) == 1
    await eventually(lambda: bool(handled))
    assert handled[0] - started >= 0.437 - TOLERANCE
    # Another delay that rounds the same way shares the queue rather than adding one.
    assert quantize_delay_ms(0.431) == 440


async def test_a_delayed_publish_for_a_routing_key_nothing_is_bound_to_is_refused(
    make_app: Callable[..., App], prefix: str
) -> None:
    app = make_app()

    class Bound(TaskMessage, routing_key=f"{prefix}.bound"):
        n: int

    class Stray(TaskMessage, routing_key=f"{prefix}.stray"):
        n: int

    @app.task(queue=f"{prefix}.q")
    async def bound(msg: Bound) -> None: ...

    async with app:
        with pytest.raises(UnroutableError, match="stray"):
            await app.publish(Stray(n=1), delay=1)
