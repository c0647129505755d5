"""rabbitworker: typed background work over RabbitMQ."""

from .__about__ import __version__
from .app import App, call, publish, submit
from .context import Context
from .dedup import Deduplicate
from .errors import Reject, Retry
from .message import TaskMessage
from .middleware import Middleware
from .retry import RetryPolicy, exponential

__all__ = [
    "App",
    "Context",
    "Deduplicate",
    "Middleware",
    "Reject",
    "Retry",
    "RetryPolicy",
    "TaskMessage",
    "__version__",
    "call",
    "exponential",
    "publish",
    "submit",
]
