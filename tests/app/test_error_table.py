"""The one table from the client library's exceptions to rabbitworker's: a case per
row, each exception made the way aiormq makes it, and a check that no row goes
untested."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
import aiormq.exceptions as amqp
import pytest
from aiormq import channel as aiormq_channel
from aiormq import connection as aiormq_connection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic, Channel, Connection
from pamqp.header import ContentHeader
from yarl import URL

from rabbitworker._amqp.errors import TABLE, Op, translate
from rabbitworker.errors import (
    BrokerError,
    ConfigurationError,
    ConnectionFailed,
    NotConfirmed,
    RabbitWorkerError,
    UnroutableError,
)


def raised(make: Callable[[], BaseException]) -> BaseException:
    """`make()`'s exception with a traceback, as the library's callers see it."""
    try:
        raise make()
    except BaseException as exc:
        return exc


def returned(routing_key: str) -> amqp.PublishError:
    """What aiormq raises for a mandatory message the broker returned."""
    frame = Basic.Return(reply_code=312, reply_text="NO_ROUTE", routing_key=routing_key)
    message = DeliveredMessage(delivery=frame, header=ContentHeader(), body=b"", channel=None)  # type: ignore[arg-type]
    return amqp.PublishError(message, frame)


def channel_close(code: int, text: str) -> amqp.AMQPError:
    return aiormq_channel.exception_by_code(Channel.Close(reply_code=code, reply_text=text))


def connection_close(code: int, text: str) -> amqp.AMQPError:
    return aiormq_connection.exception_by_code(Connection.Close(reply_code=code, reply_text=text))


def open_refused_with(text: str) -> BaseException:
    """What aiormq raises when the broker answers connection.open with a close: the
    close frame is a local of the function that raises, its text is not in the message."""

    def rpc() -> BaseException:
        frame = Connection.Close(reply_code=530, reply_text=text)
        raise amqp.InvalidFrameError(f"Expected one of ['Connection.OpenOk'], got {frame!r}")

    return raised(rpc)


def closed_by_aio_pika() -> BaseException:
    """A plain RuntimeError from aio-pika's own code: a channel asked of a connection
    that was never opened."""

    async def go() -> None:
        aio_pika.Connection(URL("amqp://guest:guest@127.0.0.1:1/")).channel()

    try:
        asyncio.run(go())
    except RuntimeError as exc:
        return exc
    raise AssertionError("aio-pika made a channel on a connection never opened")


@dataclass(frozen=True)
class Row:
    kind: type[BaseException]  # the table row this case tests
    exc: BaseException
    op: Op
    expected: type[RabbitWorkerError]
    says: str  # a fragment of the one-line message
    permanent: bool = False


ROWS: dict[str, Row] = {
    "a returned message is unroutable, naming its routing key": Row(
        amqp.PublishError,
        returned("orders.new"),
        Op.PUBLISH, UnroutableError, "no queue is bound for routing key 'orders.new'",
    ),
    "a nack is not confirmed": Row(
        amqp.DeliveryError, amqp.DeliveryError(None, Basic.Nack(delivery_tag=7)),
        Op.PUBLISH, NotConfirmed, "refused the message (nack)",
    ),
    "a login refused with 403 is a permanent authentication failure": Row(
        amqp.ProbableAuthenticationError,
        amqp.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"),
        Op.CONNECT, ConnectionFailed, "authentication failed", permanent=True,
    ),
    "no common authentication mechanism is permanent": Row(
        amqp.AuthenticationError, amqp.AuthenticationError(["EXTERNAL"], ["PLAIN"]),
        Op.CONNECT, ConnectionFailed, "authentication failed", permanent=True,
    ),
    "a connection closed with 530 is permanent and quotes the broker": Row(
        amqp.ConnectionNotAllowed,
        connection_close(530, "NOT_ALLOWED - vhost shop not found"),
        Op.CONNECT, ConnectionFailed, "NOT_ALLOWED - vhost shop not found", permanent=True,
    ),
    "connection.open answered with a close is permanent and quotes the broker": Row(
        amqp.InvalidFrameError,
        open_refused_with("NOT_ALLOWED - access to vhost '/' refused for user 'ann'"),
        Op.CONNECT, ConnectionFailed,
        "refused to open the vhost: NOT_ALLOWED - access to vhost '/' refused for user 'ann'",
        permanent=True,
    ),
    "a redeclare with other arguments is a configuration error": Row(
        amqp.ChannelPreconditionFailed,
        channel_close(406, "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'"),
        Op.SETUP, ConfigurationError, "inequivalent arg 'x-queue-type'",
    ),
    "access refused on a channel is a broker refusal, not a lost connection": Row(
        amqp.ChannelAccessRefused,
        channel_close(403, "ACCESS_REFUSED - access to queue 'q' refused"),
        Op.SETUP, BrokerError, "the broker refused: ACCESS_REFUSED",
    ),
    "a missing queue is a broker refusal naming it": Row(
        amqp.ChannelNotFoundEntity, channel_close(404, "NOT_FOUND - no queue 'q.dlq'"),
        Op.READ, BrokerError, "NOT_FOUND - no queue 'q.dlq'",
    ),
    "an exclusive queue in use is a broker refusal": Row(
        amqp.ChannelLockedResource,
        channel_close(405, "RESOURCE_LOCKED - cannot obtain exclusive access to queue 'q'"),
        Op.SETUP, BrokerError, "RESOURCE_LOCKED",
    ),
    "another channel error is a broker refusal": Row(
        amqp.AMQPChannelError, channel_close(541, "INTERNAL_ERROR - oops"),
        Op.SETUP, BrokerError, "INTERNAL_ERROR - oops",
    ),
    "a connection error while connecting quotes the library": Row(
        amqp.AMQPConnectionError,
        amqp.AMQPConnectionError(111, "Connect call failed ('127.0.0.1', 1)"),
        Op.CONNECT, ConnectionFailed, "Connect call failed ('127.0.0.1', 1)",
    ),
    "another library error on a session is a lost connection": Row(
        amqp.AMQPError, amqp.MethodNotImplemented("basic.recover-async"),
        Op.READ, ConnectionFailed, "the connection to the broker was lost (basic.recover-async)",
    ),
    "a closed channel is a lost connection": Row(
        amqp.ChannelInvalidStateError,
        amqp.ChannelInvalidStateError("<Channel: 1> closed"),
        Op.SETUP, ConnectionFailed, "the channel is closed (connection lost)",
    ),
    "a RuntimeError raised inside aio-pika is a connection not open": Row(
        RuntimeError, closed_by_aio_pika(),
        Op.READ, ConnectionFailed, "the connection to the broker is closed or not open yet",
    ),
    "a publish timeout is not confirmed": Row(
        TimeoutError, TimeoutError(),
        Op.PUBLISH, NotConfirmed, "did not confirm the message in time",
    ),
    "a socket error is a lost connection": Row(
        ConnectionError, ConnectionResetError(104, "Connection reset by peer"),
        Op.PUBLISH, ConnectionFailed, "lost (Connection reset by peer)",
    ),
    "an OS error while connecting quotes it": Row(
        OSError, OSError(101, "Network is unreachable"),
        Op.CONNECT, ConnectionFailed, "Network is unreachable",
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", ROWS.values(), ids=list(ROWS))
def test_each_row_maps_the_library_exception_to_one_line_naming_the_problem(row: Row) -> None:
    error = translate(row.exc, row.op, "doing x")

    assert type(error) is row.expected
    assert str(error).startswith("doing x: ")
    assert row.says in str(error)
    assert "\n" not in str(error)
    assert getattr(error, "permanent", False) is row.permanent


def test_every_row_of_the_table_has_a_case() -> None:
    assert {row.kind for row in ROWS.values()} == set(TABLE)
    for row in ROWS.values():
        assert isinstance(row.exc, row.kind)


@pytest.mark.parametrize("op", [Op.CONNECT, Op.SETUP, Op.READ])
def test_a_timeout_of_anything_but_a_publish_is_no_answer_rather_than_not_confirmed(
    op: Op,
) -> None:
    error = translate(TimeoutError(), op, "open a channel")

    assert type(error) is ConnectionFailed
    assert str(error) == "open a channel: the broker did not answer in time"


def test_an_unexpected_frame_that_is_no_close_is_a_transient_failure() -> None:
    error = translate(amqp.InvalidFrameError("Expected Connection.Tune"), Op.CONNECT, "connect")

    assert type(error) is ConnectionFailed
    assert not error.permanent


def test_a_refused_open_whose_frame_is_gone_still_says_what_the_refusal_means() -> None:
    error = translate(
        amqp.InvalidFrameError("Expected one of ['Connection.OpenOk'], got <Connection.Close>"),
        Op.CONNECT,
        "connect",
    )

    assert isinstance(error, ConnectionFailed) and error.permanent
    assert "does not exist, or the user has no permission on it" in str(error)


def test_a_runtime_error_from_outside_the_client_library_goes_through_as_a_bug() -> None:
    assert translate(raised(lambda: RuntimeError("closed")), Op.READ, "read q") is None


def test_exceptions_that_are_ours_or_unknown_go_through_untranslated() -> None:
    assert translate(NotConfirmed("already ours"), Op.PUBLISH, "publish") is None
    assert translate(ValueError("a bug"), Op.PUBLISH, "publish") is None


async def test_a_cancelled_confirm_is_a_lost_connection_but_a_cancelled_task_stays_cancelled() -> (
    None
):
    assert type(translate(asyncio.CancelledError(), Op.PUBLISH, "publish")) is ConnectionFailed

    async def cancelled() -> RabbitWorkerError | None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            return translate(exc, Op.PUBLISH, "publish")
        return None

    task = asyncio.create_task(cancelled())
    await asyncio.sleep(0)
    task.cancel()
    assert await task is None
