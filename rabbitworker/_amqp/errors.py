"""The one table from the client library's exceptions (aiormq, which aio-pika
raises through) to rabbitworker's, and the function every call into the library
goes through. The most specific class in the table wins."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any

import aiormq.exceptions as amqp

from ..errors import (
    BrokerError,
    ConfigurationError,
    ConnectionFailed,
    NotConfirmed,
    RabbitWorkerError,
    UnroutableError,
)

__all__ = ["TABLE", "Op", "broker_text", "translate"]


class Op(enum.Enum):
    """What was being done, which decides what a timeout means."""

    CONNECT = "connect"
    SETUP = "setup"  # open a channel, declare, consume
    PUBLISH = "publish"
    READ = "read"  # get, purge, inspect


Mapper = Callable[[BaseException, Op, str], RabbitWorkerError]


def broker_text(exc: BaseException) -> str:
    """The broker's own words from a channel or connection close (`NOT_FOUND - no
    queue 'x'`), or the exception's text."""
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, str) and " - " in arg:
            return arg
    texts = [a for a in getattr(exc, "args", ()) if isinstance(a, str) and a]
    text = texts[-1] if texts else (str(exc) or type(exc).__name__)
    return text.split("\n")[0][:300]


def _unroutable(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    frame = getattr(exc, "frame", None)
    key = getattr(frame, "routing_key", "?")
    return UnroutableError(f"{what}: no queue is bound for routing key {key!r}")


def _nacked(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return NotConfirmed(f"{what}: the broker refused the message (nack)")


def _auth(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return ConnectionFailed(
        f"{what}: authentication failed (wrong user name or password)", permanent=True
    )


def _not_allowed(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    # Connection.Close 530: an unknown vhost, or a user without access to it.
    return ConnectionFailed(f"{what}: the broker refused: {broker_text(exc)}", permanent=True)


def _precondition(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return ConfigurationError(f"{what}: {broker_text(exc)}")


def _refused(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return BrokerError(f"{what}: the broker refused: {broker_text(exc)}")


def _connection(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return ConnectionFailed(f"{what}: {broker_text(exc)}")


def _closed_channel(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    # A RuntimeError, not an AMQPError: the channel is closed, as while reconnecting.
    return ConnectionFailed(f"{what}: the channel is closed (connection lost)")


def _timeout(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    if op is Op.PUBLISH:
        return NotConfirmed(f"{what}: the broker did not confirm the message in time")
    return ConnectionFailed(f"{what}: the broker did not answer in time")


# Most specific first is not required: the lookup walks each exception's MRO.
TABLE: dict[type[BaseException], Mapper] = {
    amqp.PublishError: _unroutable,
    amqp.DeliveryError: _nacked,
    amqp.ProbableAuthenticationError: _auth,
    amqp.AuthenticationError: _auth,
    amqp.ConnectionNotAllowed: _not_allowed,
    amqp.ChannelPreconditionFailed: _precondition,
    amqp.ChannelAccessRefused: _refused,
    amqp.ChannelNotFoundEntity: _refused,
    amqp.ChannelLockedResource: _refused,
    amqp.AMQPChannelError: _refused,
    amqp.AMQPConnectionError: _connection,
    amqp.AMQPError: _connection,
    amqp.ChannelInvalidStateError: _closed_channel,
    TimeoutError: _timeout,
    ConnectionError: _connection,
    OSError: _connection,
}


def translate(exc: BaseException, op: Op, what: str) -> RabbitWorkerError | None:
    """The rabbitworker error for a client-library exception; None to let it through
    (ours already, a cancellation of the task itself, or an unknown kind)."""
    if isinstance(exc, RabbitWorkerError):
        return None
    if isinstance(exc, asyncio.CancelledError):
        # Closing a channel cancels the confirms it still owes. Only a cancellation
        # of the task itself (cancelling() > 0) may leave as a CancelledError.
        task = asyncio.current_task()
        if task is None or task.cancelling():
            return None
        return ConnectionFailed(f"{what}: the channel closed before the broker answered")
    for kind in type(exc).__mro__:
        mapper = TABLE.get(kind)
        if mapper is not None:
            return mapper(exc, op, what)
    return None


def reraise(exc: BaseException, op: Op, what: str) -> Any:
    """Raise the translation of `exc` from it, or `exc` itself when it has none."""
    error = translate(exc, op, what)
    if error is None:
        raise exc
    raise error from exc
