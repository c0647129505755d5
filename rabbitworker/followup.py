"""The follow-up publishes a delivery's outcome needs before it may be acked: the RPC
reply, the retry copy and the dead letter, each confirmed by the broker."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from .errors import DecodeError, MessageTooLarge, UnroutableError
from .publisher import PERSISTENT
from .rpc import RPC_STATUS_HEADER
from .topology import (
    dead_letter_exchange_name,
    retry_exchange_name,
    retry_queue_name,
    retry_queue_spec,
)

if TYPE_CHECKING:
    from .app import App
    from .context import Context
    from .middleware import Outcome

__all__ = ["copy_message", "dead_letter", "error_type", "is_broker_header", "reply", "retry"]

log = logging.getLogger("rabbitworker.worker")

_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-")


def is_broker_header(name: str) -> bool:
    """Whether a header is the broker's own bookkeeping (dead-lettering history, the
    quorum delivery count): a copy we publish starts without them."""
    return name == "x-delivery-count" or name.startswith(_BROKER_HEADER_PREFIXES)


MAX_ERROR_MESSAGE = 2000


async def reply(app: App, ctx: Context, body: bytes, status: str) -> None:
    """Send an RPC reply (`status` "ok" or "error") to the request's reply-to."""
    assert ctx.reply_to is not None
    message = aio_pika.Message(
        body,
        content_type="application/json",
        correlation_id=ctx.correlation_id,
        headers={RPC_STATUS_HEADER: status},
    )
    # The caller may have gone away; an undeliverable reply is not an error.
    await app.publisher.send("", ctx.reply_to, message, mandatory=False)


def copy_message(
    ctx: Context, message: AbstractIncomingMessage, extra: dict[str, Any]
) -> aio_pika.Message:
    """A copy of a delivery to publish again: same body, id and headers, plus `extra`."""
    headers = {k: v for k, v in ctx.headers.items() if not is_broker_header(k)}
    # Retry copies carry it from their first failure; a first delivery still has the
    # routing key it was published with.
    headers.setdefault("x-original-routing-key", message.routing_key or "")
    headers.update(extra)
    return aio_pika.Message(
        message.body,
        content_type=message.content_type or "application/json",
        content_encoding=message.content_encoding,
        type=message.type or ctx.routing_key,
        message_id=message.message_id,
        timestamp=message.timestamp,
        delivery_mode=PERSISTENT,
        headers=headers,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        priority=message.priority,
        app_id=message.app_id,
    )


async def retry(app: App, ctx: Context, message: AbstractIncomingMessage, outcome: Outcome) -> None:
    """Publish the next attempt: straight back to the queue, or through its retry queue."""
    copy = copy_message(ctx, message, {"x-attempt": ctx.attempt + 1})
    error = outcome.error
    log.warning(
        "message %s on %s failed on attempt %d (%s: %s); retrying in %d ms",
        ctx.message_id,
        ctx.queue,
        ctx.attempt,
        type(error).__name__,
        error,
        outcome.delay_ms,
    )
    publisher = app.publisher
    if outcome.delay_ms <= 0:
        await publisher.send("", ctx.queue, copy)
        return
    spec = retry_queue_spec(app.exchange, ctx.queue, outcome.delay_ms, app.settings.queue_type)
    await publisher.ensure_queue(spec)
    try:
        await publisher.send(retry_exchange_name(app.exchange), spec.name, copy)
    except UnroutableError:
        # The retry queue expired between our declarations; declare it and once more.
        # (Not on NotConfirmed: the copy may have landed, and the caller requeues.)
        publisher.forget_queue(retry_queue_name(ctx.queue, outcome.delay_ms))
        await publisher.ensure_queue(spec)
        await publisher.send(retry_exchange_name(app.exchange), spec.name, copy)


async def dead_letter(
    app: App, ctx: Context, message: AbstractIncomingMessage, error: BaseException
) -> None:
    """Publish the delivery to its dead-letter queue with the error in its headers."""
    text = getattr(error, "reason", None) or str(error) or type(error).__name__
    copy = copy_message(
        ctx,
        message,
        {
            "x-attempt": ctx.attempt,
            "x-error-type": error_type(error),
            "x-error-message": str(text)[:MAX_ERROR_MESSAGE],
            "x-failed-at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "x-original-queue": ctx.queue,
        },
    )
    if not isinstance(error, DecodeError | MessageTooLarge):
        log.error(
            "message %s on %s dead-lettered after attempt %d: %s: %s",
            ctx.message_id,
            ctx.queue,
            ctx.attempt,
            type(error).__name__,
            text,
        )
    # Not refused for its size: the broker already holds it, and refusing would
    # leave it looping in its queue.
    await app.publisher.send(
        dead_letter_exchange_name(app.exchange), ctx.queue, copy, limit_size=False
    )


def error_type(error: BaseException) -> str:
    """The `x-error-type` of an exception: its name, qualified unless it is ours or builtin."""
    kind = type(error)
    module = kind.__module__
    if module in ("builtins", "rabbitworker.errors"):
        return kind.__name__
    return f"{module}.{kind.__qualname__}"
