"""The one table from the client library's exceptions (aiormq, which aio-pika
raises through) to rabbitworker's, and the function every call into the library
goes through. The most specific class in the table wins."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

import aiormq.exceptions as amqp
from pamqp.commands import Connection

from ..errors import (
    BrokerError,
    ConfigurationError,
    ConnectionFailed,
    NotConfirmed,
    RabbitWorkerError,
    UnroutableError,
)

__all__ = ["TABLE", "Op", "broker_text", "reraise", "translate"]


class Op(enum.Enum):
    """What was being done, which decides what a timeout means."""

    CONNECT = "connect"
    SETUP = "setup"  # open a channel, declare, consume
    PUBLISH = "publish"
    READ = "read"  # get, purge, inspect


# None: not the library's doing after all; the exception goes through as it is.
Mapper = Callable[[BaseException, Op, str], RabbitWorkerError | None]
_LIBRARIES = ("aio_pika", "aiormq", "pamqp")


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


def _frames(tb: TracebackType | None) -> Iterator[FrameType]:
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _refused_close(exc: BaseException) -> Connection.Close | None:
    """The Connection.Close the broker sent instead of the frame aiormq expected.

    aiormq puts only the frame's repr in its message, so its text is taken from the
    frame itself, a local of the function that raised.
    """
    for frame in _frames(exc.__traceback__):
        close = frame.f_locals.get("frame")
        if isinstance(close, Connection.Close):
            return close
    return None


def _unexpected_frame(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    close = _refused_close(exc)
    if close is None and "Connection.Close" not in str(exc):
        return _connection(exc, op, what)
    # The broker answered connection.open with a close: no such vhost, or the user
    # may not use it (its words say which), and trying again cannot change that.
    reason = (
        f": {close.reply_text}"
        if close is not None and close.reply_text
        else " (it does not exist, or the user has no permission on it)"
    )
    return ConnectionFailed(f"{what}: the broker refused to open the vhost{reason}", permanent=True)


def _precondition(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return ConfigurationError(f"{what}: {broker_text(exc)}")


def _refused(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    return BrokerError(f"{what}: the broker refused: {broker_text(exc)}")


def _connection(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    if op is Op.CONNECT:
        return ConnectionFailed(f"{what}: {broker_text(exc)}")
    return ConnectionFailed(f"{what}: the connection to the broker was lost ({broker_text(exc)})")


def _closed_channel(exc: BaseException, op: Op, what: str) -> RabbitWorkerError:
    # A RuntimeError, not an AMQPError: the channel is closed, as while reconnecting.
    return ConnectionFailed(f"{what}: the channel is closed (connection lost)")


def _library_state(exc: BaseException, op: Op, what: str) -> RabbitWorkerError | None:
    # aio-pika and aiormq raise plain RuntimeErrors for a connection or channel that
    # is closed or not open yet ("... closed", "Connection is not ready"). One raised
    # elsewhere is a bug, not a broker problem, and goes through.
    frames = list(_frames(exc.__traceback__))
    module = str(frames[-1].f_globals.get("__name__", "")) if frames else ""
    if module.partition(".")[0] not in _LIBRARIES:
        return None
    return ConnectionFailed(f"{what}: the connection to the broker is closed or not open yet")


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
    amqp.InvalidFrameError: _unexpected_frame,
    amqp.ChannelPreconditionFailed: _precondition,
    amqp.ChannelAccessRefused: _refused,
    amqp.ChannelNotFoundEntity: _refused,
    amqp.ChannelLockedResource: _refused,
    amqp.AMQPChannelError: _refused,
    amqp.AMQPConnectionError: _connection,
    amqp.AMQPError: _connection,
    amqp.ChannelInvalidStateError: _closed_channel,
    RuntimeError: _library_state,
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
