"""Dead-letter queue tooling: list, replay and purge what landed in `<queue>.dlq`,
without losing anything (a replayed copy is confirmed before its dead letter goes)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from .app import App
from .errors import ConfigurationError, translate_broker_errors
from .followup import is_broker_header
from .publisher import PERSISTENT
from .topology import dead_letter_queue_name

__all__ = ["DeadLetter", "list_dead_letters", "purge", "replay"]

_ERROR_HEADERS = ("x-error-type", "x-error-message", "x-failed-at")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    type: str
    attempts: int
    error_type: str
    error_message: str
    failed_at: str
    original_queue: str
    body: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)


def _describe(message: AbstractIncomingMessage, queue: str) -> DeadLetter:
    headers: dict[str, Any] = dict(message.headers or {})
    error_type = _text(headers.get("x-error-type", ""))
    error_message = _text(headers.get("x-error-message", ""))
    failed_at = _text(headers.get("x-failed-at", ""))
    original_queue = _text(headers.get("x-original-queue", queue))
    if not error_type:
        # Dead-lettered by the broker itself (delivery limit): x-death says why.
        deaths = headers.get("x-death")
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            death = deaths[0]  # the most recent
            reason = _text(death.get("reason", "?"))
            error_type = f"broker:{reason}"
            error_message = (
                "delivered more often than the queue's x-delivery-limit: "
                "the worker process probably died while handling it"
                if reason == "delivery_limit"
                else f"dead-lettered by the broker ({reason})"
            )
            when = death.get("time")
            failed_at = (
                when.isoformat(timespec="milliseconds")
                if isinstance(when, datetime)
                else _text(when or "")
            )
            original_queue = _text(death.get("queue", queue))
        else:
            error_type = "unknown"
    try:
        attempts = int(headers.get("x-attempt", 1))
    except (TypeError, ValueError):
        attempts = 1
    return DeadLetter(
        message_id=message.message_id or "",
        type=message.type or message.routing_key or "",
        attempts=attempts,
        error_type=error_type,
        error_message=error_message,
        failed_at=failed_at,
        original_queue=original_queue,
        body=message.body.decode("utf-8", errors="replace"),
    )


async def _browse(
    app: App, queue: str, limit: int | None
) -> tuple[Any, list[AbstractIncomingMessage]]:
    """Take up to `limit` dead letters unacknowledged on a fresh channel."""
    if queue not in app.handlers:
        raise ConfigurationError(
            f"unknown queue {queue!r}; app {app.name!r} has: {', '.join(app.queues) or '(none)'}"
        )
    assert app.connection is not None
    channel = await app.connection.channel(publisher_confirms=False)
    dlq = await channel.get_queue(dead_letter_queue_name(queue), ensure=False)
    taken: list[AbstractIncomingMessage] = []
    while limit is None or len(taken) < limit:
        with translate_broker_errors(f"read {dlq.name}"):
            message = await dlq.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return channel, taken


async def list_dead_letters(app: App, queue: str, *, limit: int = 50) -> list[DeadLetter]:
    """The first `limit` dead letters of `queue`, left in place."""
    channel, taken = await _browse(app, queue, limit)
    try:
        return [_describe(m, queue) for m in taken]
    finally:
        await channel.close()  # everything taken goes back, in order


async def replay(app: App, queue: str, *, ids: Iterable[str] = (), everything: bool = False) -> int:
    """Send dead letters back to their original queue with `x-attempt` reset.

    Each copy is confirmed by the broker before its dead letter is acked.
    Returns how many were replayed.
    """
    wanted = set(ids)
    if not wanted and not everything:
        raise ConfigurationError("name the dead letters to replay (--id) or pass --all")
    channel, taken = await _browse(app, queue, None)
    count = 0
    try:
        for message in taken:
            if not everything and message.message_id not in wanted:
                continue
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if k not in _ERROR_HEADERS and not is_broker_header(k)
            }
            headers["x-attempt"] = 1
            headers["x-replayed"] = True
            target = str((message.headers or {}).get("x-original-queue", queue))
            copy = aio_pika.Message(
                message.body,
                content_type=message.content_type or "application/json",
                type=message.type,
                message_id=message.message_id,
                timestamp=message.timestamp,
                delivery_mode=PERSISTENT,
                headers=headers,
                correlation_id=message.correlation_id,
            )
            await app.publisher.send("", target, copy)
            await message.ack()
            count += 1
    finally:
        await channel.close()
    return count


async def purge(app: App, queue: str, *, ids: Iterable[str] = ()) -> int:
    """Delete the named dead letters of `queue`, or all of them when none is named."""
    wanted = set(ids)
    if not wanted:
        assert app.connection is not None
        channel = await app.connection.channel()
        try:
            dlq = await channel.get_queue(dead_letter_queue_name(queue), ensure=False)
            result = await dlq.purge()
            return int(getattr(result, "message_count", 0) or 0)
        finally:
            await channel.close()
    channel, taken = await _browse(app, queue, None)
    count = 0
    try:
        for message in taken:
            if message.message_id in wanted:
                await message.ack()
                count += 1
    finally:
        await channel.close()
    return count


def to_json(letters: list[DeadLetter]) -> str:
    return json.dumps([d.as_dict() for d in letters], indent=2)
