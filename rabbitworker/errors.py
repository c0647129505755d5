"""Every exception rabbitworker raises, under one root, and the one place where
aio-pika and aiormq errors are translated into them.

::

    RabbitWorkerError
     ├─ ConfigurationError           bad settings, unknown app path, duplicate handler
     ├─ BrokerError
     │   ├─ ConnectionFailed
     │   └─ PublishError
     │       ├─ UnroutableError      no queue bound for the routing key
     │       ├─ NotConfirmed         broker nacked or timed out
     │       └─ MessageTooLarge      body over the configured maximum
     ├─ DecodeError                  body is not valid JSON or fails validation
     │   └─ UnknownMessageType       no handler for the message's type on that queue
     ├─ HandlerTimeout               a handler ran past its task's timeout=
     ├─ RPCError
     │   ├─ RPCTimeout
     │   └─ RemoteError              the handler raised; carries remote type and message
     ├─ Retry(delay=None)            raised by a handler: retry now or after delay
     └─ Reject(reason)               raised by a handler: dead-letter at once, no retries
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import aiormq.exceptions

__all__ = [
    "BrokerError",
    "ConfigurationError",
    "ConnectionFailed",
    "DecodeError",
    "HandlerTimeout",
    "MessageTooLarge",
    "NotConfirmed",
    "PublishError",
    "RPCError",
    "RPCTimeout",
    "RabbitWorkerError",
    "Reject",
    "RemoteError",
    "Retry",
    "UnknownMessageType",
    "UnroutableError",
    "translate_broker_error",
    "translate_broker_errors",
]


class RabbitWorkerError(Exception):
    """Root of every rabbitworker exception."""


class ConfigurationError(RabbitWorkerError):
    """Bad settings, an app path that does not import, a duplicate handler."""


class BrokerError(RabbitWorkerError):
    """The broker could not be reached or refused an operation."""


class ConnectionFailed(BrokerError):
    """No connection to the broker, or it was lost."""


class PublishError(BrokerError):
    """A message was not accepted by the broker."""


class UnroutableError(PublishError):
    """No queue is bound for the message's routing key, so the broker returned it."""


class NotConfirmed(PublishError):
    """The broker nacked the message, or did not confirm it in time."""


class MessageTooLarge(PublishError):
    """The encoded message is larger than the configured maximum."""


class DecodeError(RabbitWorkerError):
    """A body that is not valid JSON or does not validate as the message type.

    Keeps the raw bytes so nothing about the bad message is lost.
    """

    def __init__(self, message: str, *, body: bytes = b"") -> None:
        super().__init__(message)
        self.body = body


class UnknownMessageType(DecodeError):
    """A delivery whose type (routing key) has no handler on the queue it came from."""


class HandlerTimeout(RabbitWorkerError, TimeoutError):
    """A handler ran past its task's `timeout=`; counts as a failed attempt."""


class RPCError(RabbitWorkerError):
    """An RPC call did not produce a reply."""


class RPCTimeout(RPCError, TimeoutError):
    """No reply arrived within the timeout."""


class RemoteError(RPCError):
    """The remote handler raised; `remote_type` and `remote_message` say what."""

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message


class Retry(RabbitWorkerError):
    """Raised by a handler: try the message again, now or after `delay` seconds.

    Counts as an attempt; after the last attempt the message is dead-lettered.
    """

    def __init__(
        self, delay: float | timedelta | None = None, reason: str = "retry requested"
    ) -> None:
        super().__init__(reason)
        self.delay = delay.total_seconds() if isinstance(delay, timedelta) else delay
        self.reason = reason


class Reject(RabbitWorkerError):
    """Raised by a handler: dead-letter the message at once, with `reason`, no retries."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason


@contextmanager
def translate_broker_errors(what: str) -> Iterator[None]:
    """Map aio-pika/aiormq exceptions raised inside the block to rabbitworker errors.

    This is the one boundary where client-library exceptions are translated.
    """
    try:
        yield
    except BaseException as exc:
        error = translate_broker_error(exc, what)
        if error is None:
            raise
        raise error from exc


def translate_broker_error(exc: BaseException, what: str) -> RabbitWorkerError | None:
    """The rabbitworker error for a client-library exception; None to let it through.

    The mapping behind `translate_broker_errors`, for a hot path that should not pay
    for a context manager per call: it catches `BaseException`, asks this function,
    re-raises as is on None and otherwise raises the answer `from` the original.
    """
    if isinstance(exc, RabbitWorkerError):
        return None
    if isinstance(exc, aiormq.exceptions.PublishError):
        frame = getattr(exc, "frame", None)
        key = getattr(frame, "routing_key", "?")
        return UnroutableError(f"{what}: no queue is bound for routing key {key!r}")
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return NotConfirmed(f"{what}: the broker did not confirm the message")
    if isinstance(exc, TimeoutError):
        return NotConfirmed(f"{what}: timed out waiting for the broker")
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return ConnectionFailed(f"{what}: authentication failed")
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        return ConfigurationError(f"{what}: {exc}")
    if isinstance(exc, aiormq.exceptions.AMQPError):
        return ConnectionFailed(f"{what}: {exc}")
    if isinstance(exc, aiormq.exceptions.ChannelInvalidStateError):
        # A RuntimeError, not an AMQPError: the channel is closed, as while reconnecting.
        return ConnectionFailed(f"{what}: the channel is closed (connection lost)")
    if isinstance(exc, ConnectionError | OSError):
        return ConnectionFailed(f"{what}: {exc}")
    if isinstance(exc, asyncio.CancelledError):
        # Closing a channel cancels the confirms it still owes. Only a cancellation of
        # the task itself (cancelling() > 0) may leave here as a CancelledError.
        task = asyncio.current_task()
        if task is None or task.cancelling():
            return None
        return ConnectionFailed(f"{what}: the channel closed before the broker answered")
    return None
