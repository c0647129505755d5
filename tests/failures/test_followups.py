"""Follow-up publishes the broker refuses for good (a retry queue that exists with
other arguments, a header AMQP cannot carry) dead-letter the original at once with
that reason: the handler runs exactly once, and an RPC caller gets an error reply.
Only a lost connection or a missing confirm hands the delivery back."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiormq
import pytest
from support import eventually, get_all, queue_depth, remember_delay

from rabbitworker import App, Context, Middleware, Reject, Retry, RetryPolicy, TaskMessage
from rabbitworker.errors import RemoteError
from rabbitworker.topology import dead_letter_queue_name, retry_exchange_name, retry_queue_spec

# Not one of the policy's steps: its retry queue is declared on demand, when the
# handler asks for this delay.
ON_DEMAND_DELAY_MS = 700


class Job(TaskMessage, routing_key="followups.job"):
    n: int


class Ask(TaskMessage[int], routing_key="followups.ask"):
    n: int


async def one_dead_letter(amqp: Any, queue: str) -> Any:
    letters: list[Any] = []

    async def arrived() -> bool:
        letters.extend(await get_all(amqp, dead_letter_queue_name(queue)))
        return bool(letters)

    await eventually(arrived, timeout=15)
    assert len(letters) == 1
    return letters[0]


@pytest.fixture
async def squatted_retry_queue(broker_url: str, prefix: str) -> AsyncIterator[str]:
    """`<prefix>.jobs.retry.700`, declared by someone else (another version of the
    app, say) with the same arguments but another x-expires."""
    queue = f"{prefix}.jobs"
    spec = retry_queue_spec(f"{prefix}.x", queue, ON_DEMAND_DELAY_MS, "quorum")
    name = spec.name
    remember_delay(ON_DEMAND_DELAY_MS)
    connection = await aiormq.connect(broker_url)
    channel = await connection.channel()
    await channel.queue_declare(
        name, durable=True, arguments={**spec.arguments, "x-expires": 3_600_000}
    )
    try:
        yield queue
    finally:
        await channel.queue_delete(name)
        await connection.close()


async def test_a_retry_queue_that_exists_with_other_arguments_dead_letters_at_once_after_one_run(
    make_app: Callable[..., App], start_worker: Any, squatted_retry_queue: str, amqp: Any
) -> None:
    app = make_app()
    queue = squatted_retry_queue
    runs: list[int] = []

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> None:
        runs.append(msg.n)
        if msg.n == 1:
            raise Retry(delay=ON_DEMAND_DELAY_MS / 1000, reason="job 1 is not ready")

    await start_worker(app)
    message_id = await app.publish(Job(n=1))

    letter = await one_dead_letter(amqp, queue)
    headers = letter.headers or {}
    assert letter.message_id == message_id
    assert headers["x-error-type"] == "ConfigurationError"
    message = str(headers["x-error-message"])
    assert message.startswith("the retry copy was refused: ConfigurationError: ")
    assert "PRECONDITION_FAILED - inequivalent arg 'x-expires'" in message
    assert message.endswith("the handler had failed with Retry: job 1 is not ready")
    assert headers["x-attempt"] == 1
    assert runs == [1]

    # The worker carries on: its publishing channel is usable again.
    await app.publish(Job(n=2))
    await eventually(lambda: runs == [1, 2])
    assert await queue_depth(amqp, queue) == 0


async def test_an_rpc_request_whose_retry_copy_is_refused_gets_an_error_reply_at_once(
    make_app: Callable[..., App], start_worker: Any, squatted_retry_queue: str, amqp: Any
) -> None:
    worker_app = make_app("worker")
    queue = squatted_retry_queue
    runs: list[int] = []

    @worker_app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[0.05]))
    async def ask(msg: Ask) -> int:
        runs.append(msg.n)
        raise Retry(delay=ON_DEMAND_DELAY_MS / 1000, reason="not yet")

    await start_worker(worker_app)
    client = make_app("client")
    async with client:
        with pytest.raises(RemoteError) as raised:
            await client.call(Ask(n=1), timeout=15, retry=True)

    assert raised.value.remote_type == "ConfigurationError"
    assert "inequivalent arg 'x-expires'" in raised.value.remote_message
    assert runs == [1]
    letter = await one_dead_letter(amqp, queue)
    assert (letter.headers or {})["x-error-type"] == "ConfigurationError"


class SetsHeader(Middleware):
    """Puts a value into the delivery's headers before the handler runs, as a
    tracing or tenancy middleware might."""

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    async def before_process(self, ctx: Context) -> None:
        ctx.headers[self.name] = self.value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (2**70, "an int of 71 bits does not fit in AMQP's 64-bit integers"),
        (object(), "AMQP has no type for a object"),
        (math.nan, "a NaN or infinite float, which RabbitMQ refuses"),
        ({"inner": [1, math.inf]}, "at bad['inner'][1]: a NaN or infinite float"),
    ],
    ids=["int over 64 bits", "object", "nan", "nested inf"],
)
@pytest.mark.parametrize(
    ("attempts", "refused"),
    [(5, "the retry copy"), (1, "the dead letter")],
    ids=["in the retry copy", "in the dead letter"],
)
async def test_a_header_that_cannot_be_sent_again_dead_letters_at_once_without_it(
    make_app: Callable[..., App],
    start_worker: Any,
    prefix: str,
    amqp: Any,
    value: Any,
    why: str,
    attempts: int,
    refused: str,
) -> None:
    app = make_app(middleware=[SetsHeader("bad", value)])
    queue = f"{prefix}.jobs"
    runs: list[int] = []

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=attempts, backoff=[0.05]))
    async def job(msg: Job, ctx: Context) -> None:
        runs.append(ctx.attempt)
        raise ValueError(f"job {msg.n} failed")

    await start_worker(app)
    await app.publish(Job(n=1), headers={"tenant": "acme"})

    letter = await one_dead_letter(amqp, queue)
    headers = letter.headers or {}
    assert runs == [1]
    assert headers["x-error-type"] == "HeaderError"
    message = str(headers["x-error-message"])
    assert message.startswith(f"{refused} was refused: HeaderError: header 'bad'")
    assert why in message
    assert "the dead letter goes without header 'bad'" in message
    assert message.endswith("the handler had failed with ValueError: job 1 failed")
    assert "bad" not in headers
    assert headers["tenant"] == "acme"
    assert await queue_depth(amqp, queue) == 0


async def test_a_refused_retry_queue_does_not_disturb_calls_waiting_on_the_same_connection(
    make_app: Callable[..., App], start_worker: Any, squatted_retry_queue: str, amqp: Any
) -> None:
    app = make_app()
    queue = squatted_retry_queue
    release = asyncio.Event()

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[0.05]))
    async def job(msg: Job) -> None:
        raise Retry(delay=ON_DEMAND_DELAY_MS / 1000)

    @app.task(queue=queue)
    async def ask(msg: Ask) -> int:
        await release.wait()
        return msg.n

    await start_worker(app)
    waiting = await app.submit(Ask(n=7))  # its reply comes to this app's connection
    await app.publish(Job(n=1))
    await one_dead_letter(amqp, queue)
    release.set()

    assert await waiting.result(timeout=10) == 7


async def test_a_retry_exchange_that_is_gone_dead_letters_at_once_after_one_run(
    make_app: Callable[..., App], start_worker: Any, prefix: str, broker_url: str, amqp: Any
) -> None:
    app = make_app()
    queue = f"{prefix}.jobs"
    runs: list[int] = []

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[0.05]))
    async def job(msg: Job) -> None:
        runs.append(msg.n)
        if msg.n == 1:
            raise ValueError("job 1 failed")

    await start_worker(app)
    connection = await aiormq.connect(broker_url)
    await (await connection.channel()).exchange_delete(retry_exchange_name(app.exchange))
    await connection.close()
    await app.publish(Job(n=1))

    letter = await one_dead_letter(amqp, queue)
    headers = letter.headers or {}
    assert runs == [1]
    assert headers["x-error-type"] == "BrokerError"
    message = str(headers["x-error-message"])
    assert message.startswith("the retry copy was refused: BrokerError: ")
    assert f"NOT_FOUND - no exchange '{retry_exchange_name(app.exchange)}'" in message
    assert message.endswith("the handler had failed with ValueError: job 1 failed")
    await app.publish(Job(n=2))
    await eventually(lambda: runs == [1, 2])


async def test_a_refused_retry_queue_declaration_does_not_fail_the_follow_ups_sent_beside_it(
    make_app: Callable[..., App], start_worker: Any, prefix: str, broker_url: str, amqp: Any
) -> None:
    # Twenty dead letters are being confirmed on the publishing channel while the
    # broker refuses to bind job 10's retry queue to the missing exchange. The broker
    # closes the channel that asked, so that must not be the publishing channel.
    app = make_app()
    queue = f"{prefix}.jobs"
    together = asyncio.Barrier(21)

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=5, backoff=[0.05]))
    async def job(msg: Job) -> None:
        await together.wait()
        if msg.n == 10:
            raise ValueError("its retry copy goes to an exchange that is gone")
        raise Reject(f"job {msg.n} is dead-lettered as it should be")

    await start_worker(app, concurrency=30)
    connection = await aiormq.connect(broker_url)
    await (await connection.channel()).exchange_delete(retry_exchange_name(app.exchange))
    await connection.close()
    for n in range(21):
        await app.publish(Job(n=n), message_id=str(n))

    letters: dict[str, Any] = {}

    async def all_there() -> bool:
        for m in await get_all(amqp, dead_letter_queue_name(queue)):
            letters[m.message_id or ""] = m.headers or {}
        return len(letters) == 21

    await eventually(all_there, timeout=20)
    assert letters.pop("10")["x-error-type"] == "BrokerError"
    assert {headers["x-error-type"] for headers in letters.values()} == {"Reject"}


async def test_an_error_message_that_is_not_valid_text_still_reaches_the_dead_letter(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any
) -> None:
    app = make_app()
    queue = f"{prefix}.jobs"
    runs: list[int] = []

    @app.task(queue=queue, retry=RetryPolicy(max_attempts=1))
    async def job(msg: Job) -> None:
        runs.append(msg.n)
        # A lone surrogate, as json.loads('"\\ud800"') gives: no UTF-8 for it.
        raise ValueError("cannot handle name '\ud800'")

    await start_worker(app)
    await app.publish(Job(n=1))

    headers = (await one_dead_letter(amqp, queue)).headers or {}
    assert runs == [1]
    assert headers["x-error-type"] == "ValueError"
    assert headers["x-error-message"] == "cannot handle name '\\ud800'"


async def test_a_dead_letter_does_not_keep_the_messages_expiration_and_so_does_not_vanish(
    make_app: Callable[..., App], start_worker: Any, prefix: str, amqp: Any, broker_url: str
) -> None:
    app = make_app()
    queue = f"{prefix}.jobs"

    @app.task(queue=queue)
    async def job(msg: Job) -> None:
        raise Reject("no")

    await start_worker(app)
    connection = await aiormq.connect(broker_url)
    channel = await connection.channel()
    await channel.confirm_delivery()
    await channel.basic_publish(
        b'{"n": 1}',
        exchange=app.exchange,
        routing_key="followups.job",
        properties=aiormq.spec.Basic.Properties(expiration="300", message_id="short-lived"),
    )
    await connection.close()
    await eventually(lambda: dead_lettered(amqp, queue))
    await asyncio.sleep(0.6)  # twice its time to live: still there
    letter = await one_dead_letter(amqp, queue)
    assert (letter.message_id, letter.expiration) == ("short-lived", None)


async def dead_lettered(amqp: Any, queue: str) -> bool:
    return await queue_depth(amqp, dead_letter_queue_name(queue)) == 1
