"""The per-delivery `Context` a handler may take as its second parameter."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .middleware import Outcome

if TYPE_CHECKING:
    from .app import App
    from .message import TaskMessage
    from .retry import RetryPolicy

__all__ = ["Context"]

# Looked up once: getLogger takes the logging module's lock on every call.
_TASK_LOG = logging.getLogger("rabbitworker.task")


class Context:
    """What a handler knows about the delivery it is handling.

    `attempt` is 1 on the first delivery and grows with each retry; `message_id`
    stays the same across retries, so it can serve as an idempotency key.
    """

    __slots__ = (
        "app",
        "attempt",
        "correlation_id",
        "headers",
        "logger",
        "message_id",
        "outcome",
        "queue",
        "redelivered",
        "reply_to",
        "retry_policy",
        "routing_key",
        "rpc_retry",
        "state",
    )

    def __init__(
        self,
        *,
        app: App,
        queue: str,
        routing_key: str,
        message_id: str,
        attempt: int,
        headers: dict[str, Any],
        retry_policy: RetryPolicy,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        redelivered: bool = False,
        rpc_retry: bool = False,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.app = app
        self.queue = queue
        self.routing_key = routing_key
        self.message_id = message_id
        self.attempt = attempt
        self.headers = headers
        self.retry_policy = retry_policy
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.redelivered = redelivered
        self.rpc_retry = rpc_retry
        self.logger = logger or _TASK_LOG
        self.outcome: Outcome | None = None
        self.state: dict[str, Any] = {}  # scratch space for middleware

    async def publish(self, msg: TaskMessage[Any], **kwargs: Any) -> str:
        """Publish a follow-up message through the worker's app; see `App.publish`."""
        return await self.app.publish(msg, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Context(queue={self.queue!r}, routing_key={self.routing_key!r}, "
            f"message_id={self.message_id!r}, attempt={self.attempt})"
        )
