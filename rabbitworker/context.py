"""The per-delivery `Context` a handler may take as its second parameter."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Unpack

from .bulk import BulkOptions, Messages, PublishResult, windowed

if TYPE_CHECKING:
    from .message import TaskMessage
    from .middleware.base import Outcome
    from .registry import Task

__all__ = ["Context"]

# Looked up once: getLogger takes the logging module's lock on every call.
_TASK_LOG = logging.getLogger("rabbitworker.task")

Publish = Callable[..., Awaitable[str]]


class Context:
    """What a handler knows about the delivery it is handling.

    `attempt` is 1 on the first delivery and grows with each retry; `message_id`
    stays the same across retries, so it can serve as an idempotency key;
    `published_at` is the message's timestamp, when its producer set one.
    `publish()` sends a follow-up message through the worker's connection.
    `state` is scratch space for middleware.
    """

    __slots__ = (
        "_publish",
        "attempt",
        "correlation_id",
        "headers",
        "logger",
        "message_id",
        "outcome",
        "published_at",
        "queue",
        "redelivered",
        "reply_to",
        "routing_key",
        "state",
        "task",
    )

    def __init__(
        self,
        *,
        task: Task,
        queue: str,
        routing_key: str,
        message_id: str,
        attempt: int,
        headers: dict[str, Any],
        publish: Publish,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        redelivered: bool = False,
        published_at: datetime | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.task = task
        self.queue = queue
        self.routing_key = routing_key
        self.message_id = message_id
        self.attempt = attempt
        self.headers = headers
        self._publish = publish
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.redelivered = redelivered
        self.published_at = published_at
        self.logger = logger or _TASK_LOG
        self.outcome: Outcome | None = None
        self.state: dict[str, Any] = {}

    async def publish(self, msg: TaskMessage[Any], **kwargs: Any) -> str:
        """Publish a follow-up message; the same options and errors as `App.publish`."""
        return await self._publish(msg, **kwargs)

    def publish_many(
        self, messages: Messages, **options: Unpack[BulkOptions]
    ) -> AsyncIterator[PublishResult]:
        """Publish follow-up messages with a window of confirms in flight; the same
        options and results as `App.publish_many`."""
        return windowed(self._publish, messages, **options)

    def __repr__(self) -> str:
        return (
            f"Context(queue={self.queue!r}, routing_key={self.routing_key!r}, "
            f"message_id={self.message_id!r}, attempt={self.attempt})"
        )
