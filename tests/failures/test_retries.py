"""Retries: the policy's arithmetic, back-off through `<queue>.retry.<ms>` queues
against a real broker, retries that stay on the failing queue, `Retry(delay=)`,
`timeout=`, and the confirm-before-ack order that makes a retry lossless."""

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiormq
import pytest
from support import APPS, eventually, get_all, queue_depth, read_record, remember_delay

from rabbitworker import App, Context, Retry, RetryPolicy, TaskMessage, exponential
from rabbitworker.errors import DecodeError, Reject
from rabbitworker.middleware import Retries
from rabbitworker.policy import Exponential
from rabbitworker.topology import dead_letter_queue_name, retry_queue_name

sys.path.insert(0, str(APPS))

from failures_support import app_module

# Timer granularity: a broker TTL and our clock may disagree by a few milliseconds.
TOLERANCE = 0.02


# -- the policy, without a broker ---------------------------------------------


def test_a_list_backoff_gives_one_retry_step_per_distinct_delay() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=[0.2, 0.4, 0.4, 1])
    assert policy.steps_ms() == [200, 400, 1000]
    assert [policy.delay(n) for n in range(1, 5)] == [0.2, 0.4, 0.4, 1.0]


def test_attempts_past_the_end_of_the_backoff_list_reuse_the_last_step() -> None:
    policy = RetryPolicy(max_attempts=6, backoff=[1, 10])
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 10.0, 10.0, 10.0, 10.0]
    assert policy.steps_ms() == [1000, 10_000]


def test_only_the_steps_a_policy_can_reach_become_retry_queues() -> None:
    assert RetryPolicy(max_attempts=2, backoff=[1, 10, 60]).steps_ms() == [1000]
    assert RetryPolicy(max_attempts=1, backoff=[1, 10, 60]).steps_ms() == []


def test_an_empty_backoff_retries_at_once_without_retry_queues() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=[])
    assert policy.delay(1) == 0.0
    assert policy.steps_ms() == []


def test_an_exponential_backoff_doubles_and_is_capped_at_its_maximum() -> None:
    policy = RetryPolicy(max_attempts=7, backoff=exponential(base=1, factor=2, max=5))
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 5, 5, 5]
    assert policy.steps_ms() == [1000, 2000, 4000, 5000]


def test_exponential_jitter_stays_within_its_share_but_the_retry_queues_use_nominal_steps() -> None:
    backoff = Exponential(base=10, factor=3, max=100, jitter=0.1)
    delays = [backoff.delay(2) for _ in range(200)]
    assert all(27 <= d <= 33 for d in delays)
    assert len(set(delays)) > 1
    policy = RetryPolicy(max_attempts=4, backoff=backoff)
    assert policy.steps_ms() == [10_000, 30_000, 90_000]


def test_a_policy_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(max_attempts=0)


def test_retry_on_and_dead_letter_on_pick_which_exceptions_retry() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError, ValueError), dead_letter_on=(KeyError,))
    assert policy.retries(ConnectionResetError())
    assert policy.retries(ValueError())
    assert not policy.retries(RuntimeError())  # not in retry_on
    assert not policy.retries(KeyError())
    strict = RetryPolicy(dead_letter_on=(UnicodeError,))
    # dead_letter_on wins over retry_on, even for a subclass of a retried type
    assert not strict.retries(UnicodeDecodeError("utf-8", b"", 0, 1, "bad"))
    assert strict.retries(ValueError())


def test_reject_and_decode_errors_never_retry_and_retry_always_does() -> None:
    policy = RetryPolicy(retry_on=(KeyError,))
    assert not policy.retries(Reject("no"))
    assert not policy.retries(DecodeError("bad body"))
    assert policy.retries(Retry())


class _Task:
    def __init__(self, policy: RetryPolicy) -> None:
        self.retry = policy


class _Ctx:
    """The few Context fields the Retries middleware reads."""

    def __init__(self, attempt: int, policy: RetryPolicy, reply_to: str | None = None) -> None:
        self.attempt = attempt
        self.task = _Task(policy)
        self.reply_to = reply_to
        self.headers: dict[str, Any] = {}
        self.outcome: Any = None


async def _outcome(ctx: _Ctx, error: BaseException) -> Any:
    await Retries().after_process(ctx, None, error)  # type: ignore[arg-type]
    return ctx.outcome


async def test_the_retries_middleware_turns_failures_into_retries_then_a_dead_letter() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=[0.2, 1.234])
    first = await _outcome(_Ctx(1, policy), ValueError("x"))
    assert (first.kind, first.delay_ms) == ("retry", 200)
    second = await _outcome(_Ctx(2, policy), ValueError("x"))
    assert (second.kind, second.delay_ms) == ("retry", 1300)  # rounded up, never down
    last = await _outcome(_Ctx(3, policy), ValueError("x"))
    assert last.kind == "dead_letter"
    assert isinstance(last.error, ValueError)
    explicit = await _outcome(_Ctx(1, policy), Retry(delay=0.05))
    assert (explicit.kind, explicit.delay_ms) == ("retry", 50)
    now = await _outcome(_Ctx(1, policy), Retry())
    assert (now.kind, now.delay_ms) == ("retry", 0)
    rpc = await _outcome(_Ctx(1, policy, reply_to="amq.rabbitmq.reply-to"), ValueError("x"))
    assert rpc.kind == "dead_letter"  # a waiting caller gets the error, not a retry


# -- against the broker ---------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_handler_that_fails_twice_is_called_three_times_after_each_backoff_step(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any, queue_type: str
) -> None:
    app = make_app(queue_type=queue_type)
    queue = f"{prefix}.jobs"
    calls: list[tuple[float, str, int]] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=3, backoff=[0.2, 0.4]))
    async def job(msg: Job, ctx: Context) -> None:
        calls.append((time.monotonic(), ctx.message_id, ctx.attempt))
        if ctx.attempt < 3:
            raise ValueError(f"attempt {ctx.attempt} fails")

    await start_worker(app)
    message_id = await app.publish(Job(n=1))
    await eventually(lambda: len(calls) >= 3)

    times = [t for t, _, _ in calls]
    assert [a for _, _, a in calls] == [1, 2, 3]
    assert {m for _, m, _ in calls} == {message_id}
    assert times[1] - times[0] >= 0.2 - TOLERANCE
    assert times[2] - times[1] >= 0.4 - TOLERANCE
    # The retries went through one queue per step, now empty, and nothing was dead-lettered.
    for name in (retry_queue_name(queue, 200), retry_queue_name(queue, 400)):
        assert await queue_depth(amqp, name) == 0
    assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 0
    assert len(calls) == 3


async def test_a_failure_in_one_of_two_queues_on_a_routing_key_is_retried_only_there(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    flaky_calls: list[int] = []
    steady_calls: list[str] = []

    class Event(TaskMessage, routing_key=f"{prefix}.event"):
        n: int

    @app.task(queue=f"{prefix}.flaky", retry=RetryPolicy(max_attempts=3, backoff=[0.1]))
    async def flaky(msg: Event, ctx: Context) -> None:
        flaky_calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ValueError("flaky")

    @app.task(queue=f"{prefix}.steady")
    async def steady(msg: Event, ctx: Context) -> None:
        steady_calls.append(ctx.message_id)

    await start_worker(app)
    message_id = await app.publish(Event(n=1))
    # Wait until the retries are over (the third attempt succeeded) before counting.
    await eventually(lambda: flaky_calls == [1, 2, 3])

    async def settled() -> bool:
        depths = [
            await queue_depth(amqp, q)
            for q in (f"{prefix}.flaky", f"{prefix}.steady", f"{prefix}.flaky.retry.100")
        ]
        return depths == [0, 0, 0]

    await eventually(settled)
    assert steady_calls == [message_id]
    assert flaky_calls == [1, 2, 3]


async def test_a_handler_raising_retry_with_a_delay_is_retried_after_that_delay(
    make_app: Callable[..., App], start_worker: Any, prefix: str
) -> None:
    app = make_app()
    calls: list[tuple[float, int]] = []
    remember_delay(700)

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    # The policy's own back-off is short; the handler asks for longer.
    @app.task(queue=f"{prefix}.jobs", retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> None:
        calls.append((time.monotonic(), ctx.attempt))
        if ctx.attempt == 1:
            raise Retry(delay=0.7, reason="the upstream asked us to wait")

    await start_worker(app)
    await app.publish(Job(n=1))
    await eventually(lambda: len(calls) >= 2)
    assert [a for _, a in calls] == [1, 2]
    assert calls[1][0] - calls[0][0] >= 0.7 - TOLERANCE


async def test_an_async_handler_past_its_timeout_is_cancelled_and_follows_its_retry_policy(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    queue = f"{prefix}.slow"
    started: list[int] = []
    cancelled: list[int] = []

    class Slow(TaskMessage, routing_key=f"{prefix}.slow"):
        n: int

    @app.task(queue=queue, timeout=0.2, retry=RetryPolicy(max_attempts=2, backoff=[0.05]))
    async def slow(msg: Slow, ctx: Context) -> None:
        started.append(ctx.attempt)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(ctx.attempt)
            raise

    await start_worker(app)
    message_id = await app.publish(Slow(n=1))

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, dead_letter_queue_name(queue)) == 1

    await eventually(dead_lettered, timeout=15)
    [letter] = await get_all(amqp, dead_letter_queue_name(queue))
    headers = letter.headers or {}
    assert letter.message_id == message_id
    assert headers["x-error-type"] == "HandlerTimeout"
    assert "timeout of 0.2 s" in str(headers["x-error-message"])
    assert headers["x-attempt"] == 2
    assert started == [1, 2]
    assert cancelled == [1, 2]


async def test_a_sync_handler_past_its_timeout_is_abandoned_with_a_warning_and_dead_lettered(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    amqp: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    app = make_app()
    queue = f"{prefix}.blocking"
    release = threading.Event()

    class Blocking(TaskMessage, routing_key=f"{prefix}.blocking"):
        n: int

    @app.task(queue=queue, timeout=0.2, retry=RetryPolicy(max_attempts=1))
    def blocking(msg: Blocking) -> None:
        release.wait(10)

    await start_worker(app)
    try:
        await app.publish(Blocking(n=1))

        async def dead_lettered() -> bool:
            return await queue_depth(amqp, dead_letter_queue_name(queue)) == 1

        await eventually(dead_lettered)
    finally:
        release.set()  # let the abandoned thread end with the test
    [letter] = await get_all(amqp, dead_letter_queue_name(queue))
    assert (letter.headers or {})["x-error-type"] == "HandlerTimeout"
    assert any("abandoned" in r.getMessage() for r in caplog.records)


async def test_a_handlers_own_timeout_error_is_not_mistaken_for_its_time_limit(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    policy = RetryPolicy(max_attempts=1)

    class Fetch(TaskMessage, routing_key=f"{prefix}.fetch"):
        n: int

    class FetchSync(TaskMessage, routing_key=f"{prefix}.fetch-sync"):
        n: int

    @app.task(queue=f"{prefix}.async", timeout=30, retry=policy)
    async def fetch(msg: Fetch) -> None:
        raise TimeoutError("the upstream timed out")

    @app.task(queue=f"{prefix}.sync", timeout=30, retry=policy)
    def fetch_sync(msg: FetchSync) -> None:
        raise TimeoutError("the upstream timed out")

    await start_worker(app)
    await app.publish(Fetch(n=1))
    await app.publish(FetchSync(n=1))
    for queue in (f"{prefix}.async", f"{prefix}.sync"):

        async def dead_lettered(q: str = queue) -> bool:
            return await queue_depth(amqp, dead_letter_queue_name(q)) == 1

        await eventually(dead_lettered)
        [letter] = await get_all(amqp, dead_letter_queue_name(queue))
        headers = letter.headers or {}
        assert headers["x-error-type"] == "TimeoutError", queue
        assert headers["x-error-message"] == "the upstream timed out"


# -- confirm before ack -----------------------------------------------------------


async def test_a_retry_copy_is_confirmed_by_the_broker_before_the_original_is_acked(
    make_app: Callable[..., App], start_worker: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    events: list[str] = []
    done = asyncio.Event()

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=f"{prefix}.jobs", retry=RetryPolicy(max_attempts=2, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> None:
        events.append(f"attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        done.set()

    # Acks are observed where every path (single or coalesced) ends: the channel's
    # basic.ack. The worker's consumer channel is new, so its delivery tags are 1, 2.
    original_ack = aiormq.Channel.basic_ack

    async def recording_ack(
        self: aiormq.Channel, delivery_tag: int, multiple: bool = False, wait: bool = True
    ) -> None:
        events.append(f"ack {delivery_tag}")
        await original_ack(self, delivery_tag, multiple, wait)

    monkeypatch.setattr(aiormq.Channel, "basic_ack", recording_ack)
    await start_worker(app)
    transport = app.transport
    send = transport.send

    async def recording_send(exchange: str, routing_key: str, *args: Any, **kw: Any) -> None:
        await send(exchange, routing_key, *args, **kw)
        if exchange != app.exchange:  # not the test's own publish, which races the handler
            events.append(f"confirmed {exchange or '(default)'}")

    monkeypatch.setattr(transport, "send", recording_send)
    await app.publish(Job(n=1))
    await asyncio.wait_for(done.wait(), 10)
    await eventually(lambda: events[-1] == "ack 2")
    assert events == [
        "attempt 1",
        f"confirmed {app.exchange}.retry",  # the retry copy, confirmed ...
        "ack 1",  # ... before the original is acked
        "attempt 2",
        "ack 2",
    ]


async def test_an_unconfirmed_retry_copy_leaves_the_original_unacked_and_it_comes_back(
    make_app: Callable[..., App], start_worker: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rabbitworker.errors import NotConfirmed

    app = make_app()
    attempts: list[tuple[int, bool]] = []

    class Job(TaskMessage, routing_key=f"{prefix}.job"):
        n: int

    @app.task(queue=f"{prefix}.jobs", retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> None:
        attempts.append((ctx.attempt, ctx.redelivered))
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")

    await start_worker(app)
    transport = app.transport
    send = transport.send
    refused: list[str] = []

    async def refuse_first_retry(exchange: str, routing_key: str, *args: Any, **kw: Any) -> None:
        if exchange.endswith(".retry") and not refused:
            refused.append(routing_key)
            raise NotConfirmed("the broker nacked it (simulated)")
        await send(exchange, routing_key, *args, **kw)

    monkeypatch.setattr(transport, "send", refuse_first_retry)
    await app.publish(Job(n=1))
    await eventually(lambda: len(attempts) >= 3)
    # The failed retry publish handed the original back: it came again as attempt 1,
    # redelivered, and this time its retry went through.
    assert attempts == [(1, False), (1, True), (2, False)]
    assert refused == [f"{prefix}.jobs.retry.50"]


async def test_a_worker_killed_after_the_retry_confirm_and_before_the_ack_loses_nothing(
    broker_url: str, prefix: str, tmp_path: Path, worker_process: Any, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module(
        "failures_kill", prefix=prefix, record=record, broker_url=broker_url
    ) as m:
        async with m.app:
            message_id = await m.app.publish(m.Flaky(n=1))
        queue = m.name("flaky")
        doomed = worker_process("--app", "failures_kill:app")
        await eventually(lambda: doomed.proc.poll() is not None, timeout=30)
        assert doomed.proc.returncode == -9
        killed = [line for line in read_record(tmp_path) if line[0].startswith("retry-confirmed")]
        assert len(killed) == 1

        # Both survive the kill: the unacked original goes back to the queue, and the
        # confirmed retry copy joins it there when its 100 ms are up.
        async def both_kept() -> bool:
            return await queue_depth(amqp, queue) == 2

        await eventually(both_kept, timeout=20)
        survivor = worker_process("--app", "failures_kill:app", env={"RW_TEST_NO_KILL": "1"})

        def finished() -> bool:
            return len([line for line in read_record(tmp_path) if line[0] == "done"]) >= 2

        await eventually(finished, timeout=30)
        assert survivor.stop() == 0
        lines = read_record(tmp_path)
        done = [line for line in lines if line[0] == "done"]
        # Worst case, as documented: the work is done twice, under one message id.
        assert [line[2] for line in done] == [message_id, message_id]
        assert all(line[3] == "2" for line in done)
        for name in (queue, retry_queue_name(queue, 100), dead_letter_queue_name(queue)):
            assert await queue_depth(amqp, name) == 0
