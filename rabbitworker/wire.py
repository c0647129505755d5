"""The wire format, in one place: every header name and content type rabbitworker
reads or writes, the properties of a new message, of a reply and of a copy (retry,
dead letter, replay), attempt parsing and the size check.

docs/wire-format.md is the same contract written for clients in other languages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .errors import MessageTooLarge

__all__ = [
    "ATTEMPT",
    "CRASHES",
    "DEATH",
    "DELAY",
    "DELIVERY_COUNT",
    "DIRECT_REPLY_TO",
    "ERROR_HEADERS",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "FAILED_AT",
    "FIRST_DEATH_EXCHANGE",
    "FIRST_DEATH_QUEUE",
    "FIRST_DEATH_REASON",
    "JSON",
    "MAX_ERROR_MESSAGE",
    "ORIGINAL_QUEUE",
    "ORIGINAL_ROUTING_KEY",
    "PERSISTENT",
    "REPLAYED",
    "RESULTS_TTL",
    "RPC_RETRY",
    "RPC_STATUS",
    "TRACEPARENT",
    "TRACESTATE",
    "Properties",
    "attempt_of",
    "check_size",
    "copy_properties",
    "crashes_of",
    "error_headers",
    "error_type",
    "is_broker_header",
    "message_properties",
    "new_message_id",
    "replays_of",
    "reply_properties",
    "results_ttl_of",
    "routing_label",
    "rpc_retry_requested",
    "text_of",
]

JSON = "application/json"
PERSISTENT = 2
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# Headers rabbitworker writes.
ATTEMPT = "x-attempt"  # 1 on the first delivery, +1 per retry
RPC_STATUS = "x-rpc-status"  # "ok" or "error", on every RPC reply
RPC_RETRY = "x-rpc-retry"  # on a request whose caller lets it be retried
DELAY = "rw-delay-ms"  # selects the delay queue of a delayed publish
CRASHES = "x-crashes"  # worker deaths while the message ran alone
REPLAYED = "x-replayed"  # how often `dlq replay` sent it back (true in older copies: 1)
RESULTS_TTL = "x-results-ttl"  # track the status for this many seconds (results backend)
ERROR_TYPE = "x-error-type"
ERROR_MESSAGE = "x-error-message"
FAILED_AT = "x-failed-at"
ORIGINAL_QUEUE = "x-original-queue"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
# W3C trace context (OpenTelemetry, rabbitworker.ops.tracing): copied with the
# message into its retries and dead letter.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
ERROR_HEADERS = (ERROR_TYPE, ERROR_MESSAGE, FAILED_AT, ORIGINAL_QUEUE)

# Headers the broker writes for its own bookkeeping: dead-lettering history and the
# quorum queue's delivery count. A copy we publish starts without them.
DEATH = "x-death"
DELIVERY_COUNT = "x-delivery-count"
FIRST_DEATH_EXCHANGE = "x-first-death-exchange"
FIRST_DEATH_QUEUE = "x-first-death-queue"
FIRST_DEATH_REASON = "x-first-death-reason"
_BROKER_PREFIXES = (DEATH, "x-first-death-", "x-last-death-")

MAX_ERROR_MESSAGE = 2000

# The RFC 4122 variant bits (10xx) applied to a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


@dataclass(slots=True)
class Properties:
    """The AMQP basic properties of a message, as rabbitworker reads and writes them.

    `type` is the message type (the routing key it was published with); it is what
    the worker dispatches on.
    """

    content_type: str | None = JSON
    content_encoding: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    delivery_mode: int | None = PERSISTENT
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


def new_message_id() -> str:
    """A random (version 4) UUID as its usual 36-character string.

    Formatted straight from the random hex: `str(uuid.uuid4())` takes twice as long,
    which shows on the publish path.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def message_properties(
    message_type: str,
    *,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> Properties:
    """The properties of a new message of `message_type` (its routing key)."""
    all_headers: dict[str, Any] = {ATTEMPT: 1}
    if headers:
        all_headers.update(headers)
    return Properties(
        headers=all_headers,
        # Kept from aio-pika's Message, which always sends priority 0: the same bytes.
        priority=0,
        correlation_id=correlation_id,
        reply_to=reply_to,
        message_id=message_id or new_message_id(),
        timestamp=datetime.now(UTC),
        type=message_type,
    )


def reply_properties(correlation_id: str | None, status: str) -> Properties:
    """The properties of an RPC reply; `status` is "ok" or "error"."""
    return Properties(
        headers={RPC_STATUS: status},
        delivery_mode=None,
        correlation_id=correlation_id,
    )


def is_broker_header(name: str) -> bool:
    """Whether a header is the broker's own bookkeeping, which a copy drops."""
    return name == DELIVERY_COUNT or name.startswith(_BROKER_PREFIXES)


def copy_properties(
    properties: Properties,
    *,
    routing_key: str,
    set_headers: Mapping[str, Any] | None = None,
    drop_headers: Iterable[str] = (),
) -> Properties:
    """The properties of a copy of a delivered message: the one copy behind every
    move (`rabbitworker.move`: a retry, a dead letter, a hand-back, a replay, a crash
    suspect).

    Every property and header is kept as delivered (header values keep their AMQP
    types), except the broker's bookkeeping headers and `drop_headers`; the copy is
    persistent, and `x-original-routing-key` records the routing key it was first
    delivered with. `set_headers` are applied last.
    """
    dropped = set(drop_headers)
    headers = {
        k: v for k, v in properties.headers.items() if k not in dropped and not is_broker_header(k)
    }
    # Retry copies carry it from their first failure; a first delivery still has
    # the routing key it was published with.
    headers.setdefault(ORIGINAL_ROUTING_KEY, routing_key)
    if set_headers:
        headers.update(set_headers)
    return replace(
        properties,
        headers=headers,
        delivery_mode=PERSISTENT,
        type=properties.type or routing_key,
    )


def error_headers(error: BaseException, *, queue: str, attempt: int) -> dict[str, Any]:
    """The headers a dead letter carries about the failure that put it there."""
    text = str(getattr(error, "reason", None) or str(error) or type(error).__name__)
    # Lone surrogates have no UTF-8: escaped, or the dead letter could not be sent.
    text = text[:MAX_ERROR_MESSAGE].encode("utf-8", "backslashreplace").decode()
    return {
        ATTEMPT: attempt,
        ERROR_TYPE: error_type(error),
        ERROR_MESSAGE: text,
        FAILED_AT: datetime.now(UTC).isoformat(timespec="milliseconds"),
        ORIGINAL_QUEUE: queue,
    }


def error_type(error: BaseException) -> str:
    """The `x-error-type` of an exception: its name, qualified unless it is ours or
    builtin (or what the exception names itself in `wire_error_type`)."""
    explicit = getattr(error, "wire_error_type", None)
    if isinstance(explicit, str):
        return explicit
    kind = type(error)
    module = kind.__module__
    if module == "builtins" or module.startswith("rabbitworker."):
        return kind.__name__
    return f"{module}.{kind.__qualname__}"


def _count(headers: Mapping[str, Any], name: str, default: int) -> int:
    try:
        return max(default, int(headers.get(name, default)))
    except (TypeError, ValueError):
        return default


def attempt_of(headers: Mapping[str, Any]) -> int:
    """The delivery's attempt number (`x-attempt`, at least 1)."""
    return _count(headers, ATTEMPT, 1)


def crashes_of(headers: Mapping[str, Any]) -> int:
    """How often worker processes died while the message ran alone (`x-crashes`)."""
    return _count(headers, CRASHES, 0)


def replays_of(headers: Mapping[str, Any]) -> int:
    """How often the message was replayed from its dead-letter queue (`x-replayed`)."""
    return _count(headers, REPLAYED, 0)


def results_ttl_of(headers: Mapping[str, Any]) -> float | None:
    """The seconds its producer asked its status to be kept (`x-results-ttl`), if any."""
    value = headers.get(RESULTS_TTL)
    try:
        return float(value) if value is not None and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def rpc_retry_requested(headers: Mapping[str, Any]) -> bool:
    """Whether the caller of an RPC request lets it be retried by the task's policy."""
    return bool(headers.get(RPC_RETRY))


def check_size(body: bytes, limit: int, what: str = "message") -> None:
    """Raise `MessageTooLarge` when `body` is over `limit` bytes."""
    if len(body) > limit:
        raise MessageTooLarge(
            f"{what} of {len(body)} bytes is over the maximum of {limit} (max_message_size)"
        )


def text_of(value: Any) -> str:
    """A header value as text, whatever its AMQP type (bytes decoded leniently)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def routing_label(routing_key: str) -> str:
    """The routing key to name a publish by in metrics and spans: each RPC reply goes
    to a reply-to name of its own, so all of them are named `(reply)`."""
    return "(reply)" if routing_key.startswith(DIRECT_REPLY_TO) else routing_key
