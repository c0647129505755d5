"""Moving a delivery: publish a copy where it goes next, with its headers changed,
wait for the broker's confirm, then ack the original. The one way a message changes
queue: a retry, a dead letter, a hand-back to the tail of its queue, a crash
suspect, a replay.

The original is acked only once its copy is confirmed, so a failure at any step
loses nothing: a copy that was not confirmed leaves the original held (the caller
decides where it goes), and an ack that fails after the confirm leaves the broker
to deliver the original again (a duplicate at worst, with the same message id).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from .transport import Delivery, Transport
from .wire import copy_properties

__all__ = ["acknowledge", "move"]

log = logging.getLogger("rabbitworker.worker")


async def move(
    transport: Transport,
    delivery: Delivery,
    exchange: str,
    routing_key: str,
    *,
    set_headers: Mapping[str, Any] | None = None,
    drop_headers: Iterable[str] = (),
    keep_expiration: bool = True,
    before_ack: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Move `delivery`: its copy (`wire.copy_properties`, with `set_headers` and
    without `drop_headers`, and without its per-message TTL unless
    `keep_expiration`) published to `exchange` with `routing_key` and confirmed,
    then `before_ack()`, then the ack of the original.

    Raises what the publish raises (`PublishError` kinds, `ConnectionFailed`), the
    original then still held. Returns False when the ack failed after the confirm
    (logged: the broker delivers the original again).
    """
    properties = copy_properties(
        delivery.properties,
        routing_key=delivery.routing_key,
        set_headers=set_headers,
        drop_headers=drop_headers,
    )
    if not keep_expiration:
        properties.expiration = None
    await transport.send(exchange, routing_key, delivery.body, properties)
    if before_ack is not None:
        await before_ack()
    return await acknowledge(delivery)


async def acknowledge(delivery: Delivery) -> bool:
    """Ack `delivery`; False when that failed (logged: the broker delivers it again)."""
    try:
        await delivery.ack()
    except Exception as exc:
        log.warning(
            "message %s on %s: ack failed (%s); the broker will deliver it again",
            delivery.message_id,
            delivery.queue,
            exc,
        )
        return False
    return True
