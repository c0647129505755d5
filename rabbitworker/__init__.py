"""rabbitworker: typed background work over RabbitMQ.

Everything a user imports comes from here: the app and its producer API, the
message base class, the handler's context, retry policies, middleware, the worker,
and every exception.
"""

from .__about__ import __version__
from .app import App, call, publish, submit
from .bulk import PublishResult, publish_many
from .context import Context
from .errors import (
    BrokerError,
    ConfigurationError,
    ConnectionFailed,
    DecodeError,
    HandlerTimeout,
    HeaderError,
    MessageTooLarge,
    NotConfirmed,
    PublishError,
    RabbitWorkerError,
    Reject,
    RemoteError,
    Retry,
    RPCError,
    RPCTimeout,
    UnknownMessageType,
    UnroutableError,
    WorkerCrashed,
)
from .message import TaskMessage
from .middleware import Deduplicate, Middleware, Outcome
from .pacing import RateLimit
from .policy import RetryPolicy, exponential
from .rpc import PendingReply
from .worker import Worker

__all__ = [
    "App",
    "BrokerError",
    "ConfigurationError",
    "ConnectionFailed",
    "Context",
    "DecodeError",
    "Deduplicate",
    "HandlerTimeout",
    "HeaderError",
    "MessageTooLarge",
    "Middleware",
    "NotConfirmed",
    "Outcome",
    "PendingReply",
    "PublishError",
    "PublishResult",
    "RPCError",
    "RPCTimeout",
    "RabbitWorkerError",
    "RateLimit",
    "Reject",
    "RemoteError",
    "Retry",
    "RetryPolicy",
    "TaskMessage",
    "UnknownMessageType",
    "UnroutableError",
    "Worker",
    "WorkerCrashed",
    "__version__",
    "call",
    "exponential",
    "publish",
    "publish_many",
    "submit",
]
