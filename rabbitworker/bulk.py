"""Bulk publishing: many messages with a window of unconfirmed publishes in flight,
each message's outcome (its id, or its error) reported in the order of the input.

Every message goes through the same confirmed, `mandatory` publish as `publish()`:
a result says `ok` only once the broker confirmed that message, and an unroutable
one reports `UnroutableError`. At most `window` messages are taken from the input
ahead of the results read, so memory stays bounded whatever the input's length
(a generator of a million messages is fine).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypedDict, Unpack

from .errors import ConfigurationError, RabbitWorkerError
from .message import TaskMessage
from .wire import new_message_id

__all__ = [
    "DEFAULT_WINDOW",
    "BulkOptions",
    "Messages",
    "PublishResult",
    "publish_many",
    "windowed",
]

# Unconfirmed publishes in flight by default. Timed from 16 to 4,096 on the bench
# machine (docs/performance.md, "publish_many"), no window was measurably faster;
# 512 covers rate x round trip (10,000 msg/s over 50 ms) and costs under 1 MiB.
DEFAULT_WINDOW = 512

Messages = Iterable[TaskMessage[Any]] | AsyncIterable[TaskMessage[Any]]
PublishOne = Callable[..., Awaitable[str]]


class BulkOptions(TypedDict, total=False):
    """The options of `publish_many`: `window` (unconfirmed messages in flight at
    most, default `DEFAULT_WINDOW`), and `headers`, `delay`, `track` as for `publish`,
    applied to every message."""

    window: int
    headers: Mapping[str, Any] | None
    delay: float | timedelta | None
    track: bool | timedelta | float


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What became of one message of a `publish_many`.

    `index` is its position in the input (from 0); `message_id` the id it was
    published with (set on failures too, as the message carried it); `error` is None
    once the broker confirmed the message, else the error `publish()` would have
    raised (`UnroutableError`, `NotConfirmed`, `ConnectionFailed`, `MessageTooLarge`).
    """

    index: int
    message: TaskMessage[Any]
    message_id: str
    error: RabbitWorkerError | None = None

    @property
    def ok(self) -> bool:
        """The broker confirmed the message."""
        return self.error is None


_Pending = tuple[int, TaskMessage[Any], str, "asyncio.Future[str]"]


async def _numbered(messages: Messages) -> AsyncIterator[tuple[int, TaskMessage[Any]]]:
    index = 0
    if isinstance(messages, AsyncIterable):
        async for msg in messages:
            yield index, msg
            index += 1
    else:
        for msg in messages:
            yield index, msg
            index += 1


async def _settle(pending: _Pending) -> PublishResult:
    index, msg, message_id, future = pending
    try:
        await future
    except RabbitWorkerError as exc:
        return PublishResult(index, msg, message_id, exc)
    return PublishResult(index, msg, message_id)


async def windowed(
    publish: PublishOne,
    messages: Messages,
    *,
    window: int = DEFAULT_WINDOW,
    **options: Any,
) -> AsyncIterator[PublishResult]:
    """Publish `messages` through `publish` (a producer's `publish`) with up to
    `window` confirms outstanding; yields one `PublishResult` per message, in input
    order. `options` (headers, delay, track) apply to every message.

    A message's failure is its result, not an exception; anything else (a bug, a
    cancellation) propagates. Stopping early (`break`) cancels the publishes in
    flight: those messages may or may not have reached the broker, and are not
    reported.
    """
    if window < 1:
        raise ConfigurationError(f"publish_many: window must be at least 1, not {window}")
    if "message_id" in options:
        raise ConfigurationError("publish_many gives each message an id of its own")
    pending: deque[_Pending] = deque()
    try:
        async for index, msg in _numbered(messages):
            if len(pending) >= window:
                yield await _settle(pending.popleft())
            message_id = new_message_id()
            future = asyncio.ensure_future(publish(msg, message_id=message_id, **options))
            pending.append((index, msg, message_id, future))
        while pending:
            yield await _settle(pending.popleft())
    finally:
        await _cancel(pending)


async def _cancel(pending: deque[_Pending]) -> None:
    futures = [future for *_, future in pending]
    pending.clear()
    for future in futures:
        future.cancel()
    if futures:
        await asyncio.gather(*futures, return_exceptions=True)


def publish_many(
    messages: Messages, **options: Unpack[BulkOptions]
) -> AsyncIterator[PublishResult]:
    """`App.publish_many` on the current app."""
    from .app import current_app  # the app module imports this one

    return current_app().publish_many(messages, **options)
