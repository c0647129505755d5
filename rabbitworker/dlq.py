"""Dead-letter queue tooling: list, replay and purge what landed in `<queue>.dlq`,
without losing anything (a replay is a move: the copy is confirmed before its dead
letter goes).
The CLI's `dlq` commands and the dashboard both act through these functions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import BrokerError, ConfigurationError
from .move import move
from .topology import dead_letter_queue_name
from .transport import Delivery
from .wire import (
    ATTEMPT,
    DEATH,
    ERROR_HEADERS,
    ERROR_MESSAGE,
    ERROR_TYPE,
    FAILED_AT,
    ORIGINAL_QUEUE,
    REPLAYED,
    attempt_of,
    replays_of,
    text_of,
)

if TYPE_CHECKING:
    from .app import App

__all__ = [
    "DeadLetter",
    "describe",
    "list_dead_letters",
    "printable",
    "purge",
    "replay",
    "to_json",
]


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as an operator reads it."""

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


def printable(text: str) -> str:
    """Text as an operator can read and type it: bytes that were not UTF-8 (decoded
    as surrogate escapes) are shown as \\xNN."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def _text(value: Any) -> str:
    return printable(text_of(value))


def describe(message: Delivery, queue: str) -> DeadLetter:
    """What a dead letter of `queue` says about itself."""
    headers = message.headers
    error_type = _text(headers.get(ERROR_TYPE, ""))
    error_message = _text(headers.get(ERROR_MESSAGE, ""))
    failed_at = _text(headers.get(FAILED_AT, ""))
    original_queue = _text(headers.get(ORIGINAL_QUEUE, queue))
    if not error_type:
        # Dead-lettered by the broker itself (delivery limit): x-death says why.
        deaths = headers.get(DEATH)
        if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
            death = deaths[0]  # the most recent
            reason = _text(death.get("reason", "?"))
            error_type = f"broker:{reason}"
            error_message = (
                "delivered more often than the queue's x-delivery-limit"
                if reason == "delivery_limit"
                else f"dead-lettered by the broker ({reason})"
            )
            when = death.get("time")
            failed_at = (
                when.isoformat(timespec="milliseconds")
                if isinstance(when, datetime)
                else _text(when or "")
            )
        else:
            error_type = "unknown"
    return DeadLetter(
        message_id=printable(message.message_id),
        type=printable(message.type),
        attempts=attempt_of(headers),
        error_type=error_type,
        error_message=error_message,
        failed_at=failed_at,
        original_queue=original_queue,
        body=message.body.decode("utf-8", errors="replace"),
    )


def _check_queue(app: App, queue: str) -> None:
    if queue not in app.registry.tasks:
        raise ConfigurationError(
            f"unknown queue {queue!r}; app {app.name!r} has: {', '.join(app.queues) or '(none)'}"
        )


async def list_dead_letters(app: App, queue: str, *, limit: int = 50) -> list[DeadLetter]:
    """The first `limit` dead letters of `queue`, left in place."""
    _check_queue(app, queue)
    async with app.transport.browse(dead_letter_queue_name(queue)) as browser:
        return [describe(m, queue) for m in await browser.take(limit)]


async def replay(
    app: App, queue: str, *, ids: Iterable[str] = (), everything: bool = False
) -> list[str]:
    """Move dead letters back to `queue`, the queue their dead-letter queue belongs
    to, with `x-attempt` reset and the error headers removed. Each copy is confirmed
    by the broker before its dead letter is acked. Returns the replayed ids.

    Raises `ConfigurationError` for a queue the app does not have, or for ids that
    are not in the dead-letter queue (then nothing is replayed); `BrokerError` when
    a dead letter's ack failed after its copy was replayed (it stays, and the
    replays stop there); what publishing raises.
    """
    _check_queue(app, queue)
    wanted = set(ids)
    if not wanted and not everything:
        raise ConfigurationError("name the dead letters to replay (--id) or pass --all")
    transport, name = app.transport, dead_letter_queue_name(queue)
    async with transport.browse(name) as browser:
        taken = [m for m in await browser.take() if everything or _named(m, wanted)]
        missing = wanted - _ids(taken)
        if missing:
            raise ConfigurationError(f"not in {name}: {', '.join(sorted(missing))}")
        replayed = []
        for message in taken:
            moved = await move(
                transport,
                message,
                "",
                queue,
                set_headers={ATTEMPT: 1, REPLAYED: replays_of(message.headers) + 1},
                drop_headers=ERROR_HEADERS,
            )
            if not moved:
                raise BrokerError(
                    f"dead letter {printable(message.message_id)} was replayed to {queue}, "
                    f"but the broker did not take its ack: it stays in {name} too"
                )
            replayed.append(message.message_id)
    return replayed


async def purge(app: App, queue: str, *, ids: Iterable[str] = ()) -> int:
    """Delete the named dead letters of `queue` (all of them when none is named);
    returns how many. Raises `ConfigurationError` for ids that are not there."""
    _check_queue(app, queue)
    name = dead_letter_queue_name(queue)
    wanted = set(ids)
    if not wanted:
        return await app.transport.purge(name)
    async with app.transport.browse(name) as browser:
        taken = [m for m in await browser.take() if _named(m, wanted)]
        missing = wanted - _ids(taken)
        if missing:
            raise ConfigurationError(f"not in {name}: {', '.join(sorted(missing))}")
        for message in taken:
            await message.ack()
    return len(taken)


def _named(message: Delivery, ids: set[str]) -> bool:
    # By its id as listed, too: an id that is not UTF-8 is listed as \xNN escapes.
    return message.message_id in ids or printable(message.message_id) in ids


def _ids(messages: list[Delivery]) -> set[str]:
    return {m.message_id for m in messages} | {printable(m.message_id) for m in messages}


def to_json(letters: list[DeadLetter]) -> str:
    return json.dumps([d.as_dict() for d in letters], indent=2)
