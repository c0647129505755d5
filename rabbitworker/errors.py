"""Every exception rabbitworker raises, under one root.

::

    RabbitWorkerError
     ├─ ConfigurationError           bad settings or URL, unknown app path, duplicate handler
     ├─ BrokerError
     │   ├─ ConnectionFailed         no connection to the broker, or it was lost
     │   └─ PublishError
     │       ├─ UnroutableError      no queue bound for the routing key
     │       ├─ NotConfirmed         broker nacked or timed out (or blocks publishers)
     │       ├─ MessageTooLarge      body over the configured maximum
     │       └─ HeaderError          a header value AMQP cannot carry
     ├─ DecodeError                  body is not valid JSON or fails validation
     │   └─ UnknownMessageType       no handler for the message's type on that queue
     ├─ HandlerTimeout               a handler ran past its task's timeout=
     ├─ WorkerCrashed                worker processes died while running the message alone
     ├─ RPCError
     │   ├─ RPCTimeout
     │   └─ RemoteError              the handler raised; carries remote type and message
     ├─ Retry(delay=None)            raised by a handler: retry now or after delay
     └─ Reject(reason)               raised by a handler: dead-letter at once, no retries

The client library's exceptions are translated into these at one boundary, the
table in `rabbitworker._amqp.errors`, and never reach users.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "BrokerError",
    "ConfigurationError",
    "ConnectionFailed",
    "DecodeError",
    "HandlerTimeout",
    "HeaderError",
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
    "WorkerCrashed",
]


class RabbitWorkerError(Exception):
    """Root of every rabbitworker exception."""


class ConfigurationError(RabbitWorkerError):
    """Bad settings or URL, an app path that does not import, a duplicate handler,
    or a broker object that exists with other arguments."""


class BrokerError(RabbitWorkerError):
    """The broker could not be reached or refused an operation."""


class ConnectionFailed(BrokerError):
    """No connection to the broker, or it was lost.

    `permanent` is true when trying again cannot help (wrong password, unknown
    vhost, no permission): callers give up at once instead of retrying.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class PublishError(BrokerError):
    """A message was not accepted by the broker."""


class UnroutableError(PublishError):
    """No queue is bound for the message's routing key, so the broker returned it."""


class NotConfirmed(PublishError):
    """The broker nacked the message, or did not confirm it in time."""


class MessageTooLarge(PublishError):
    """The encoded message is larger than the configured maximum."""


class HeaderError(PublishError):
    """A header AMQP cannot carry: a key over 255 bytes, an int over 64 bits, an
    unknown type. `header` is the top-level key; the message names the nested path."""

    def __init__(self, message: str, *, header: str) -> None:
        super().__init__(message)
        self.header = header


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


class WorkerCrashed(RabbitWorkerError):
    """Worker processes died (segfault, `os._exit`, out-of-memory kill) while the
    message ran alone in them, as often as the queue's `delivery_limit` allows."""


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
