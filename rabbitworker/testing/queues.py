"""The parts of the in-memory broker that hold messages: a `Message` as the broker
keeps it, a `MemoryQueue` with RabbitMQ's queue arguments (TTL, dead-letter exchange,
the quorum delivery limit), and the `x-death` bookkeeping of dead-lettering."""

from __future__ import annotations

import copy
import itertools
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..wire import (
    DEATH,
    DELIVERY_COUNT,
    ERROR_MESSAGE,
    ERROR_TYPE,
    FIRST_DEATH_EXCHANGE,
    FIRST_DEATH_QUEUE,
    FIRST_DEATH_REASON,
    ORIGINAL_QUEUE,
    Properties,
    attempt_of,
    text_of,
)

__all__ = ["DeadLetter", "MemoryChannel", "MemoryQueue", "Message", "as_sent", "with_death"]

_sequence = itertools.count(1)


class MemoryChannel:
    """Stands for an AMQP channel: deliveries are owed to it until acked, and go
    back to their queue when it closes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_closed = False

    def __repr__(self) -> str:
        return f"MemoryChannel({self.name!r}, closed={self.is_closed})"


@dataclass(slots=True, eq=False)
class Message:
    """A message as the broker holds it.

    `exchange` and `routing_key` are what it was last published (or dead-lettered)
    with; `returns` counts how often it went back to its queue unacknowledged
    (a quorum queue's delivery count); `at` is the virtual time it entered the queue.
    """

    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    returns: int = 0
    redelivered: bool = False
    expires_at: float | None = None
    at: float = 0.0
    seq: int = field(default_factory=lambda: next(_sequence))

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers

    @property
    def message_id(self) -> str:
        return self.properties.message_id or ""

    @property
    def type(self) -> str:
        return self.properties.type or self.routing_key

    def copy(self) -> Message:
        """An independent copy (headers included), as a broker stores each routed copy."""
        properties = replace(self.properties, headers=copy.deepcopy(self.properties.headers))
        return replace(self, properties=properties, seq=next(_sequence))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue, with why it is there.

    `reason` is rabbitworker's error message (`x-error-message`) or, for a message
    the broker dead-lettered itself, the broker's reason (`delivery_limit`,
    `expired`, `rejected`); `error_type` is `x-error-type` (None for the broker's).
    """

    message: Message
    queue: str
    reason: str
    error_type: str | None
    attempt: int

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        headers = message.headers
        death = headers.get(DEATH) or [{}]
        reason = headers.get(ERROR_MESSAGE)
        queue = headers.get(ORIGINAL_QUEUE) or death[0].get("queue", "")
        return cls(
            message=message,
            queue=text_of(queue),
            reason=text_of(reason) if reason is not None else text_of(death[0].get("reason", "")),
            error_type=text_of(headers[ERROR_TYPE]) if ERROR_TYPE in headers else None,
            attempt=attempt_of(headers),
        )


class MemoryQueue:
    """A queue and the arguments the broker acts on.

    Honoured: `x-message-ttl` (in virtual time), `x-dead-letter-exchange` and
    `-routing-key`, `x-delivery-limit` on quorum queues, the quorum queue's
    `x-delivery-count` header, and `x-max-length` with the default overflow (the
    oldest ready message is dropped). Not: `x-expires` (a queue stays until
    deleted), `x-max-length-bytes`, other overflow behaviours.
    """

    def __init__(self, name: str, arguments: dict[str, Any]) -> None:
        self.name = name
        self.arguments = dict(arguments)
        self.ready: deque[Message] = deque()
        self.unacked: dict[int, tuple[Message, MemoryChannel]] = {}
        self.received: list[Message] = []  # every copy that entered it, for tests
        self.consumers: list[Any] = []
        self.quorum = arguments.get("x-queue-type", "classic") == "quorum"
        ttl = arguments.get("x-message-ttl")
        self.ttl = None if ttl is None else int(ttl) / 1000
        self.dead_letter_exchange: str | None = arguments.get("x-dead-letter-exchange")
        self.dead_letter_routing_key: str | None = arguments.get("x-dead-letter-routing-key")
        limit = arguments.get("x-delivery-limit") if self.quorum else None
        self.delivery_limit: int | None = None if limit is None else int(limit)
        length = arguments.get("x-max-length")
        drops_head = arguments.get("x-overflow", "drop-head") == "drop-head"
        self.max_length: int | None = None if length is None or not drops_head else int(length)

    def __repr__(self) -> str:
        return f"MemoryQueue({self.name!r}, ready={len(self.ready)}, unacked={len(self.unacked)})"

    def put(self, message: Message, now: float) -> list[Message]:
        """Enqueue `message`; returns the oldest ready ones it pushed past
        `x-max-length`, which must be dead-lettered (reason `maxlen`)."""
        message.at = now
        message.expires_at = None if self.ttl is None else now + self.ttl
        self.received.append(message.copy())
        self.ready.append(message)
        over: list[Message] = []
        while self.max_length is not None and len(self.ready) > self.max_length:
            over.append(self.ready.popleft())
        return over

    def give_back(self, messages: list[Message]) -> list[Message]:
        """Return unacknowledged messages to the head of the queue, in their order;
        returns the ones over the delivery limit, which must be dead-lettered."""
        over: list[Message] = []
        for message in reversed(messages):
            message.returns += 1
            message.redelivered = True
            if self.delivery_limit is not None and message.returns > self.delivery_limit:
                over.append(message)
            else:
                self.ready.appendleft(message)
        over.reverse()
        return over

    def delivered_properties(self, message: Message) -> Properties:
        """The properties a consumer sees: a copy, with the quorum delivery count."""
        properties = message.copy().properties
        if self.quorum:
            properties.headers[DELIVERY_COUNT] = message.returns
        return properties

    def expired(self, now: float) -> list[Message]:
        """Take the messages whose TTL ran out by `now` (a fixed TTL: from the head)."""
        out: list[Message] = []
        while self.ready and (due := self.ready[0].expires_at) is not None and due <= now:
            out.append(self.ready.popleft())
        return out

    @property
    def next_expiry(self) -> float | None:
        return self.ready[0].expires_at if self.ready else None


def with_death(message: Message, queue: str, reason: str) -> Properties:
    """The properties of `message` dead-lettered from `queue`, with RabbitMQ's
    `x-death` history (one entry per queue and reason, the latest first) and
    `x-first-death-*` headers; the per-message TTL is dropped."""
    properties = message.copy().properties
    headers = properties.headers
    headers.pop(DELIVERY_COUNT, None)
    deaths: list[dict[str, Any]] = list(headers.get(DEATH) or [])
    same = [d for d in deaths if d.get("queue") == queue and d.get("reason") == reason]
    if same:
        entry = same[0]
        deaths.remove(entry)
        entry["count"] = int(entry.get("count", 0)) + 1
    else:
        entry = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": datetime.now(UTC).replace(microsecond=0),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
    headers[DEATH] = [entry, *deaths]
    headers.setdefault(FIRST_DEATH_EXCHANGE, message.exchange)
    headers.setdefault(FIRST_DEATH_QUEUE, queue)
    headers.setdefault(FIRST_DEATH_REASON, reason)
    properties.expiration = None
    return properties


def as_sent(properties: Properties) -> Properties:
    """What the broker keeps of published properties: a copy, its timestamp in whole
    seconds (an AMQP timestamp has no fraction)."""
    stamp: datetime | None = properties.timestamp
    return replace(
        properties,
        headers=copy.deepcopy(properties.headers),
        timestamp=stamp.replace(microsecond=0) if stamp is not None else None,
    )
