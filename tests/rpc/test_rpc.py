"""RPC against a real broker: typed replies over direct reply-to, many concurrent
calls on one connection, remote errors, unroutable requests, timeouts and late
replies, submit/gather, the retry rule for RPC requests, and connection loss."""

import asyncio
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from support import ROOT, eventually, get_all

import rabbitworker
from rabbitworker import App, Context, RetryPolicy, TaskMessage
from rabbitworker.errors import (
    ConfigurationError,
    ConnectionFailed,
    DecodeError,
    RemoteError,
    RPCTimeout,
    UnroutableError,
)
from rabbitworker.rpc import PendingReply

# Routing keys are scoped to each test's own exchange, so these classes serve every test.


class Sum(BaseModel):
    value: int


class Add(TaskMessage[Sum], routing_key="rpc.add"):
    a: int
    b: int


class Fail(TaskMessage, routing_key="rpc.fail"):
    text: str


class Wait(TaskMessage[int], routing_key="rpc.wait"):
    n: int


class Flaky(TaskMessage[int], routing_key="rpc.flaky"):
    key: str
    succeed_on: int


class Odd(TaskMessage, routing_key="rpc.odd"):
    pass


class Big(TaskMessage[str], routing_key="rpc.big"):
    size: int


class Nowhere(TaskMessage[int], routing_key="rpc.nowhere"):
    pass


class AddWithText(TaskMessage[Sum], routing_key="rpc.add"):
    """Another producer's idea of `Add`: same routing key, a body `Add` rejects."""

    a: str


@dataclass
class RPCApp:
    """An app with RPC handlers the test can steer, running in this process."""

    app: App
    queue: str
    gates: dict[int, asyncio.Event] = field(default_factory=dict)
    attempts: dict[str, list[int]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)

    def gate(self, n: int) -> asyncio.Event:
        return self.gates.setdefault(n, asyncio.Event())


@pytest.fixture
def rpc(make_app: Callable[..., App], prefix: str) -> RPCApp:
    app = make_app("rpc")
    state = RPCApp(app, f"{prefix}.rpc")

    @app.task(queue=state.queue)
    async def add(msg: Add) -> Sum:
        state.calls["add"] += 1
        return Sum(value=msg.a + msg.b)

    @app.task(queue=state.queue, retry=RetryPolicy(max_attempts=3, backoff=[0]))
    async def fail(msg: Fail) -> None:
        state.calls["fail"] += 1
        raise ValueError(msg.text)

    @app.task(queue=state.queue)
    async def wait(msg: Wait) -> int:
        await state.gate(msg.n).wait()
        return msg.n

    # A real back-off, so retried requests pass through a retry queue and back.
    @app.task(queue=state.queue, retry=RetryPolicy(max_attempts=3, backoff=[0.05]))
    async def flaky(msg: Flaky, ctx: Context) -> int:
        state.attempts.setdefault(msg.key, []).append(ctx.attempt)
        if ctx.attempt < msg.succeed_on:
            raise ValueError(f"attempt {ctx.attempt} of {msg.key} fails")
        return ctx.attempt

    @app.task(queue=state.queue)
    async def odd(msg: Odd) -> Any:
        return object()

    return state


async def one_dead_letter(amqp: Any, queue: str) -> Any:
    """Wait for the single dead letter of `queue` and return it."""
    letters: list[Any] = []

    async def arrived() -> bool:
        letters.extend(await get_all(amqp, f"{queue}.dlq"))
        return len(letters) >= 1

    await eventually(arrived)
    assert len(letters) == 1
    return letters[0]


@pytest.fixture
async def client(make_app: Callable[..., App], rpc: RPCApp, start_worker: Any) -> Any:
    """A second app on the same exchange, as a web node would be, with a worker
    for `rpc` running."""
    await start_worker(rpc.app)
    producer = make_app("producer")
    async with producer:
        yield producer


# -- against a worker subprocess ---------------------------------------------------


async def test_call_returns_the_typed_reply_from_a_worker_subprocess(
    app_module: Any, worker_process: Any
) -> None:
    m = app_module("rpc_math")
    worker_process("--app", "rpc_math:app", "--queues", m.name("rpc")).wait_consuming()
    async with m.app:
        reply = await rabbitworker.call(m.Add(a=4, b=5), timeout=5)
        assert reply == m.AddResult(value=9)
        assert type(reply) is m.AddResult
        assert await m.app.call(m.Multiply(a=6, b=7), timeout=5) == m.AddResult(value=42)
        assert await m.app.call(m.Divide(a=1, b=4), timeout=5) == 0.25
        # No declared reply type: the reply is plain JSON.
        described = await m.app.call(m.Describe(n=4), timeout=5)
        assert isinstance(described, dict)
        assert described["n"] == 4 and described["even"] is True
        with pytest.raises(RemoteError) as info:
            await m.app.call(m.Divide(a=1, b=0), timeout=5)
        assert info.value.remote_type == "ZeroDivisionError"
        assert info.value.remote_message == "float division by zero"


async def test_two_thousand_concurrent_calls_from_one_client_each_get_their_own_reply(
    app_module: Any, worker_process: Any
) -> None:
    m = app_module("rpc_math")
    worker_process("--app", "rpc_math:app", "--queues", m.name("rpc")).wait_consuming()
    async with m.app:
        requests = [m.Add(a=i, b=1_000_000 * i) for i in range(2000)]
        replies = await asyncio.gather(*(m.app.call(r, timeout=60) for r in requests))
        assert m.app.session.rpc.in_flight == 0
    for i, reply in enumerate(replies):
        assert reply == m.AddResult(value=1_000_001 * i), i


# -- errors ------------------------------------------------------------------------


async def test_a_handler_exception_reaches_the_caller_as_remote_error_and_is_dead_lettered(
    client: App, rpc: RPCApp, amqp: Any
) -> None:
    with pytest.raises(RemoteError) as info:
        await client.call(Fail(text="the printer is on fire"), timeout=10)
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message == "the printer is on fire"
    assert isinstance(info.value, rabbitworker.errors.RPCError)

    letter = await one_dead_letter(amqp, rpc.queue)
    assert letter.headers["x-error-type"] == "ValueError"
    assert letter.headers["x-error-message"] == "the printer is on fire"
    assert rpc.calls["fail"] == 1  # not retried: the caller was waiting


async def test_a_request_that_fails_validation_on_the_worker_gets_a_remote_error_reply(
    client: App, rpc: RPCApp, make_app: Callable[..., App], amqp: Any
) -> None:
    other = make_app("other-producer")
    async with other:
        with pytest.raises(RemoteError) as info:
            await other.call(AddWithText(a="four"), timeout=10)
    assert info.value.remote_type == "DecodeError"
    assert "Add" in info.value.remote_message
    assert "b" in info.value.remote_message  # the missing field is named
    assert rpc.calls["add"] == 0

    letter = await one_dead_letter(amqp, rpc.queue)
    assert letter.headers["x-error-type"] == "DecodeError"


async def test_a_call_to_an_unbound_routing_key_raises_unroutable_error_not_a_timeout(
    client: App,
) -> None:
    with pytest.raises(UnroutableError, match=r"rpc\.nowhere"):
        await client.call(Nowhere(), timeout=30)
    assert client.session.rpc.in_flight == 0


async def test_a_timed_out_call_raises_rpc_timeout_and_its_late_reply_never_reaches_the_next_call(
    client: App, rpc: RPCApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rabbitworker.rpc")
    with pytest.raises(RPCTimeout):
        await client.call(Wait(n=1), timeout=0.3)
    assert client.session.rpc.in_flight == 0

    # The handler finishes now; its reply arrives with nobody waiting for it.
    rpc.gate(1).set()
    await eventually(lambda: "late or unknown reply" in caplog.text)

    rpc.gate(2).set()
    assert await client.call(Wait(n=2), timeout=10) == 2
    assert await client.call(Add(a=1, b=1), timeout=10) == Sum(value=2)
    assert client.session.rpc.in_flight == 0


async def test_a_return_value_json_cannot_carry_becomes_a_remote_error(
    client: App, rpc: RPCApp, amqp: Any
) -> None:
    with pytest.raises(RemoteError) as info:
        await client.call(Odd(), timeout=10)
    assert info.value.remote_type == "PydanticSerializationError"
    assert "serialize" in info.value.remote_message

    letter = await one_dead_letter(amqp, rpc.queue)
    assert letter.headers["x-error-type"].endswith("PydanticSerializationError")


async def test_a_reply_over_the_maximum_message_size_becomes_a_remote_error(
    make_app: Callable[..., App], prefix: str, start_worker: Any, amqp: Any
) -> None:
    app = make_app(max_message_size=10_000)

    @app.task(queue=f"{prefix}.rpc")
    async def big(msg: Big) -> str:
        return "x" * msg.size

    await start_worker(app)
    assert await app.call(Big(size=100), timeout=10) == "x" * 100
    with pytest.raises(RemoteError) as info:
        await app.call(Big(size=20_000), timeout=10)
    assert info.value.remote_type == "MessageTooLarge"

    letter = await one_dead_letter(amqp, f"{prefix}.rpc")
    assert letter.headers["x-error-type"] == "MessageTooLarge"


async def test_a_reply_that_does_not_match_the_declared_type_raises_decode_error(
    make_app: Callable[..., App], prefix: str, start_worker: Any
) -> None:
    class Liar(TaskMessage[Sum], routing_key="rpc.liar"):
        pass

    app = make_app()

    @app.task(queue=f"{prefix}.rpc")
    async def liar(msg: Liar) -> Any:
        return {"total": "not a sum"}

    await start_worker(app)
    with pytest.raises(DecodeError, match="reply does not validate"):
        await app.call(Liar(), timeout=10)


# -- submit ------------------------------------------------------------------------


async def test_submit_returns_pending_replies_that_can_be_gathered(
    client: App, rpc: RPCApp
) -> None:
    pendings = [await client.submit(Wait(n=n)) for n in range(10, 15)]
    assert all(isinstance(p, PendingReply) for p in pendings)
    assert len({p.message_id for p in pendings}) == 5
    assert not any(p.done() for p in pendings)
    for n in range(10, 15):
        rpc.gate(n).set()
    assert await asyncio.gather(*(p.result(timeout=10) for p in pendings)) == list(range(10, 15))
    assert all(p.done() for p in pendings)
    assert client.session.rpc.in_flight == 0


async def test_module_level_call_and_submit_act_on_the_most_recently_connected_app(
    client: App,
) -> None:
    assert await rabbitworker.call(Add(a=1, b=2), timeout=10) == Sum(value=3)
    pending = await rabbitworker.submit(Add(a=3, b=4))
    assert await pending.result(timeout=10) == Sum(value=7)


async def test_module_level_call_without_a_connected_app_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no rabbitworker app is connected"):
        await rabbitworker.call(Add(a=1, b=2), timeout=5)


# -- the retry rule ----------------------------------------------------------------


async def test_an_rpc_request_is_not_retried_by_default(client: App, rpc: RPCApp) -> None:
    with pytest.raises(RemoteError, match="attempt 1 of plain fails"):
        await client.call(Flaky(key="plain", succeed_on=2), timeout=10)
    assert rpc.attempts["plain"] == [1]


async def test_an_rpc_request_with_retry_true_follows_the_task_policy(
    client: App, rpc: RPCApp
) -> None:
    assert await client.call(Flaky(key="second", succeed_on=2), timeout=10, retry=True) == 2
    assert rpc.attempts["second"] == [1, 2]

    # Out of attempts: the error reply comes after the last one, not the first.
    with pytest.raises(RemoteError, match="attempt 3 of never fails"):
        await client.call(Flaky(key="never", succeed_on=99), timeout=10, retry=True)
    assert rpc.attempts["never"] == [1, 2, 3]


# -- connection loss ---------------------------------------------------------------


async def test_losing_the_connection_fails_waiting_calls_and_later_calls_work_again(
    client: App, rpc: RPCApp
) -> None:
    waiting = asyncio.ensure_future(client.call(Wait(n=20), timeout=60))
    await eventually(lambda: client.session.rpc.in_flight == 1)
    transport = client.transport.connection.transport  # type: ignore[attr-defined]
    assert transport is not None
    await transport.connection.close(ConnectionResetError("simulated network failure"))
    with pytest.raises(ConnectionFailed, match=r"lost|closed"):
        await waiting
    assert client.session.rpc.in_flight == 0

    # The robust connection comes back, and so does the reply consumer.
    rpc.gate(21).set()

    async def answers_again() -> bool:
        try:
            return await client.call(Wait(n=21), timeout=2) == 21
        except (ConnectionFailed, RPCTimeout):
            return False

    await eventually(answers_again, timeout=30)
    rpc.gate(20).set()


async def test_a_call_made_while_the_broker_is_unreachable_ends_within_its_timeout(
    make_app: Callable[..., App], rpc: RPCApp, start_worker: Any, proxy: Any, broker_url: str
) -> None:
    await start_worker(rpc.app)
    producer = make_app("producer")
    # With a long publish timeout, a call bounded only by it would hang the test.
    producer.configure(url=proxy.url(broker_url), publish_timeout=240)
    async with producer:
        assert await producer.call(Add(a=1, b=2), timeout=10) == Sum(value=3)
        waiting = asyncio.ensure_future(producer.call(Wait(n=50), timeout=60))
        await eventually(lambda: producer.session.rpc.in_flight == 1)
        proxy.cut(down="refuse")
        with pytest.raises(ConnectionFailed):
            await waiting
        # An RPC request is not held for a reconnect (its reply could not come back
        # across one): the call fails at once, or at the latest within its timeout.
        with pytest.raises((RPCTimeout, ConnectionFailed)) as info:
            await producer.call(Add(a=2, b=2), timeout=1)
        assert any(
            reason in str(info.value)
            for reason in ("connection lost", "not confirmed within 1 s", "replies")
        )
        assert producer.session.rpc.in_flight == 0
        await proxy.restore()

        async def answers_again() -> bool:
            try:
                return await producer.call(Add(a=3, b=3), timeout=2) == Sum(value=6)
            except (ConnectionFailed, RPCTimeout):
                return False

        await eventually(answers_again, timeout=30)
    rpc.gate(50).set()


async def test_closing_the_app_fails_waiting_calls_instead_of_hanging(
    client: App, rpc: RPCApp
) -> None:
    waiting = asyncio.ensure_future(client.call(Wait(n=30), timeout=60))
    pending = await client.submit(Wait(n=31))
    await eventually(lambda: client.session.rpc.in_flight == 2)
    await client.close()
    with pytest.raises(ConnectionFailed, match="closed"):
        await waiting
    with pytest.raises(ConnectionFailed, match="closed"):
        await pending.result(timeout=60)
    rpc.gate(30).set()
    rpc.gate(31).set()


async def test_closing_the_app_while_requests_are_being_published_fails_each_call_clearly(
    client: App, rpc: RPCApp
) -> None:
    calls = [asyncio.ensure_future(client.call(Wait(n=n), timeout=60)) for n in range(100, 150)]
    await eventually(lambda: client.session.rpc.in_flight == 50)
    # Some are still waiting for their publish confirm, some for their reply.
    await client.close()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert [repr(o) for o in outcomes if not isinstance(o, ConnectionFailed)] == []
    for n in range(100, 150):
        rpc.gate(n).set()


async def test_a_closed_publishing_channel_fails_waiting_calls_and_later_calls_work_again(
    client: App, rpc: RPCApp, prefix: str
) -> None:
    waiting = asyncio.ensure_future(client.call(Wait(n=40), timeout=60))
    await eventually(lambda: client.session.rpc.in_flight == 1)
    # A channel error (here a passive declare of a missing queue) closes the channel
    # that holds the reply consumer; the robust channel reopens with a new one.
    with pytest.raises(Exception, match="NOT_FOUND"):
        channel = client.transport.publisher.channel  # type: ignore[attr-defined]
        await channel.declare_queue(f"{prefix}.missing", passive=True)
    with pytest.raises(ConnectionFailed):
        await waiting
    rpc.gate(41).set()

    async def answers_again() -> bool:
        try:
            return await client.call(Wait(n=41), timeout=2) == 41
        except (ConnectionFailed, RPCTimeout):
            return False

    await eventually(answers_again, timeout=30)
    rpc.gate(40).set()


# -- typing ------------------------------------------------------------------------

TYPED = """\
from pydantic import BaseModel

from rabbitworker import TaskMessage, call, submit


class AddResult(BaseModel):
    value: int


class Add(TaskMessage[AddResult], routing_key="math.add"):
    a: int
    b: int


class Ping(TaskMessage, routing_key="ping"):
    pass


async def main() -> None:
    reply: AddResult = await call(Add(a=4, b=5), timeout=5)
    pending = await submit(Add(a=1, b=2))
    later: AddResult = await pending.result(timeout=5)
    untyped: str = await call(Ping(), timeout=5)  # no reply type declared: Any
    print(reply, later, untyped)
"""


def test_call_returns_the_declared_reply_type_under_mypy_strict(tmp_path: Path) -> None:
    good = tmp_path / "typed_ok.py"
    good.write_text(TYPED)
    bad = tmp_path / "typed_bad.py"
    bad.write_text(
        TYPED
        + "\n\nasync def wrong() -> None:\n    n: int = await call(Add(a=1, b=2), timeout=5)\n"
    )

    def mypy(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--strict",
                "--cache-dir",
                str(tmp_path / "cache"),
                str(path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )

    ok = mypy(good)
    assert ok.returncode == 0, ok.stdout
    wrong = mypy(bad)
    assert wrong.returncode == 1
    assert 'incompatible type "Add"; expected "TaskMessage[int]"' in wrong.stdout
