"""The broker layout: every exchange and queue name comes from a pure function
here, queue arguments from one builder, and `build_topology()` lists the whole
layout of an app so it can be declared, printed and deleted as one value."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .wire import DELAY

__all__ = [
    "ExchangeSpec",
    "QueueSpec",
    "QueueType",
    "Topology",
    "beat_leader_queue_name",
    "beat_state_queue_spec",
    "broker_delivery_limit",
    "build_topology",
    "dead_letter_exchange_name",
    "dead_letter_queue_name",
    "delay_exchange_name",
    "delay_queue_name",
    "delay_queue_spec",
    "quantize_delay_ms",
    "queue_arguments",
    "retry_exchange_name",
    "retry_queue_name",
    "retry_queue_spec",
    "suspect_queue_name",
    "topic_matches",
    "work_queue_specs",
]

QueueType = Literal["quorum", "classic"]

# An expiring (retry or delay) queue in use is declared again at least this often,
# which resets its x-expires timer.
REDECLARE_S = 30.0


def retry_exchange_name(exchange: str) -> str:
    return f"{exchange}.retry"


def dead_letter_exchange_name(exchange: str) -> str:
    return f"{exchange}.dlx"


def delay_exchange_name(exchange: str) -> str:
    return f"{exchange}.delay"


def retry_queue_name(queue: str, delay_ms: int) -> str:
    return f"{queue}.retry.{delay_ms}"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dlq"


def suspect_queue_name(queue: str) -> str:
    """Where the messages a dead worker process held wait to run one at a time."""
    return f"{queue}.suspect"


def beat_leader_queue_name(exchange: str) -> str:
    """The exclusive queue whose holder is the beat leader of the apps on `exchange`."""
    return f"{exchange}.beat.leader"


def beat_state_queue_spec(exchange: str, schedule: str) -> QueueSpec:
    """Where the beat leader keeps a schedule's last tick: one message at most (the
    newest; the broker drops the older), read by the next leader."""
    return QueueSpec(
        name=f"{exchange}.beat.{schedule}",
        arguments={**queue_arguments("classic"), "x-max-length": 1},
        role="beat state",
    )


def delay_queue_name(exchange: str, delay_ms: int) -> str:
    return f"{exchange}.delay.{delay_ms}"


def quantize_delay_ms(seconds: float) -> int:
    """Round a delay up to two significant digits of milliseconds (at most 10% later).

    Each distinct delay needs its own queue (one fixed TTL per queue, so a long delay
    never holds up a short one); rounding bounds them to 90 per power of ten.
    """
    # Round to a microsecond first, so float noise (0.1 + 0.2) cannot add a step.
    ms = max(1, math.ceil(round(seconds * 1000, 3)))
    if ms < 100:
        return ms
    scale: int = 10 ** (len(str(ms)) - 2)
    return math.ceil(ms / scale) * scale


def delay_queue_expiry_ms(delay_ms: int) -> int:
    # A delay queue is redeclared at least every REDECLARE_S while in use, and
    # expires only after twice its TTL plus a minute unused: a message always
    # leaves it before it can expire.
    return 2 * delay_ms + 60_000


def queue_arguments(
    queue_type: QueueType,
    *,
    dead_letter_exchange: str | None = None,
    dead_letter_routing_key: str | None = None,
    message_ttl_ms: int | None = None,
    expires_ms: int | None = None,
    delivery_limit: int | None = None,
) -> dict[str, Any]:
    """The `x-` arguments of a queue: the one builder every queue goes through."""
    args: dict[str, Any] = {"x-queue-type": queue_type}
    if dead_letter_exchange is not None:
        args["x-dead-letter-exchange"] = dead_letter_exchange
        if queue_type == "quorum":
            # Broker-side dead-lettering is at most once unless asked otherwise.
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
    if dead_letter_routing_key is not None:
        args["x-dead-letter-routing-key"] = dead_letter_routing_key
    if message_ttl_ms is not None:
        args["x-message-ttl"] = message_ttl_ms
    if expires_ms is not None:
        args["x-expires"] = expires_ms
    if delivery_limit is not None and queue_type == "quorum":
        args["x-delivery-limit"] = delivery_limit
    return args


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    type: Literal["topic", "direct", "headers"]


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)
    role: str = "work"
    binding_arguments: dict[str, Any] | None = None

    @property
    def expires(self) -> bool:
        return "x-expires" in self.arguments


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """The layout as text, for `rabbitworker topology`."""
        lines = ["exchanges:"]
        lines += [f"  {x.name}  ({x.type}, durable)" for x in self.exchanges]
        lines.append("queues:")
        for q in self.queues:
            args = ", ".join(f"{k}={v}" for k, v in q.arguments.items())
            lines.append(f"  {q.name}  [{q.role}] ({args})")
            match = f" {q.binding_arguments}" if q.binding_arguments else ""
            lines += [f"    <- {ex} : {key!r}{match}" for ex, key in q.bindings]
        lines += self.notes
        return "\n".join(lines)


def retry_queue_spec(exchange: str, queue: str, delay_ms: int, queue_type: QueueType) -> QueueSpec:
    """A retry step: holds a failed message `delay_ms`, then dead-letters it straight
    back to `queue` through the default exchange (never to the topic exchange, so a
    retry reaches no other subscriber)."""
    name = retry_queue_name(queue, delay_ms)
    return QueueSpec(
        name=name,
        arguments=queue_arguments(
            queue_type,
            dead_letter_exchange="",
            dead_letter_routing_key=queue,
            message_ttl_ms=delay_ms,
            expires_ms=delay_queue_expiry_ms(delay_ms),
        ),
        bindings=((retry_exchange_name(exchange), name),),
        role="retry",
    )


def delay_queue_spec(exchange: str, delay_ms: int, queue_type: QueueType) -> QueueSpec:
    """A delayed-publish step: holds messages `delay_ms`, then dead-letters them to the
    topic exchange under their own routing key."""
    name = delay_queue_name(exchange, delay_ms)
    return QueueSpec(
        name=name,
        arguments=queue_arguments(
            queue_type,
            dead_letter_exchange=exchange,
            message_ttl_ms=delay_ms,
            expires_ms=delay_queue_expiry_ms(delay_ms),
        ),
        # Matched on a header, not the routing key: the message must keep its own
        # routing key to be routed by the topic exchange when it expires.
        bindings=((delay_exchange_name(exchange), ""),),
        binding_arguments={"x-match": "all", DELAY: str(delay_ms)},
        role="delay",
    )


# The quorum queues' own `x-delivery-limit` never goes below this. The worker counts
# the crashes a message causes itself (alone, on the suspect queue); the broker counts
# every return, also those of the innocent neighbours a dying process held, so its
# limit is only a backstop (for a message that kills a process before the worker can
# move it) and must leave room for a neighbour returned by more than one crash.
BROKER_DELIVERY_LIMIT_FLOOR = 20


def broker_delivery_limit(delivery_limit: int) -> int:
    """The `x-delivery-limit` of a work queue and its suspect queue."""
    return max(delivery_limit, BROKER_DELIVERY_LIMIT_FLOOR)


def work_queue_specs(
    exchange: str,
    queue: str,
    keys: Iterable[str],
    retry_steps_ms: Iterable[int],
    *,
    queue_type: QueueType,
    delivery_limit: int,
) -> list[QueueSpec]:
    """A work queue and its parts: the queue bound to its keys, its crash-suspect
    queue, its dead-letter queue and one retry queue per back-off step."""
    dlx = dead_letter_exchange_name(exchange)
    crash_backstop = queue_arguments(
        queue_type,
        dead_letter_exchange=dlx,
        dead_letter_routing_key=queue,
        delivery_limit=broker_delivery_limit(delivery_limit),
    )
    return [
        QueueSpec(
            name=queue,
            arguments=crash_backstop,
            bindings=tuple((exchange, key) for key in sorted(set(keys))),
        ),
        QueueSpec(name=suspect_queue_name(queue), arguments=crash_backstop, role="crash suspects"),
        QueueSpec(
            name=dead_letter_queue_name(queue),
            arguments=queue_arguments(queue_type),
            bindings=((dlx, queue),),
            role="dead letters",
        ),
        *(retry_queue_spec(exchange, queue, ms, queue_type) for ms in sorted(set(retry_steps_ms))),
    ]


def build_topology(
    exchange: str,
    queues: Mapping[str, Iterable[str]],
    retry_steps_ms: Mapping[str, Iterable[int]],
    *,
    queue_type: QueueType = "quorum",
    delivery_limit: int = 20,
) -> Topology:
    """The whole layout for an exchange and its queues.

    `queues` maps each queue to the routing keys (or patterns) it binds;
    `retry_steps_ms` maps it to the back-off delays its tasks use.
    """
    exchanges = (
        ExchangeSpec(exchange, "topic"),
        ExchangeSpec(retry_exchange_name(exchange), "direct"),
        ExchangeSpec(dead_letter_exchange_name(exchange), "direct"),
        ExchangeSpec(delay_exchange_name(exchange), "headers"),
    )
    specs = [
        spec
        for queue, keys in sorted(queues.items())
        for spec in work_queue_specs(
            exchange,
            queue,
            keys,
            retry_steps_ms.get(queue, ()),
            queue_type=queue_type,
            delivery_limit=delivery_limit,
        )
    ]
    notes = (
        f"delayed publishing declares {delay_queue_name(exchange, 0).rsplit('.', 1)[0]}.<ms> "
        "queues on demand (x-expires; delays rounded up to 2 significant digits of ms)",
    )
    return Topology(exchanges, tuple(specs), notes)


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic binding `pattern` (with `*` and `#`) matches routing `key`."""
    return _match(pattern.split("."), key.split("."))


def _match(pat: list[str], words: list[str]) -> bool:
    if not pat:
        return not words
    head, rest = pat[0], pat[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match(rest, words[1:])
