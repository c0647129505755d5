"""Publishing typed messages: the body and properties of a `TaskMessage`, a
confirmed mandatory publish to the app's exchange, and delayed publishing through
the broker-side delay queues."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Any, Unpack

from .bulk import BulkOptions, Messages, PublishResult, windowed
from .errors import ConfigurationError, UnroutableError
from .message import TaskMessage
from .middleware.base import PublishHooks
from .results.tracking import Tracker, ttl_seconds
from .topology import QueueType, delay_exchange_name, delay_queue_spec, quantize_delay_ms
from .transport import Transport
from .wire import DELAY, RESULTS_TTL, Properties, check_size, message_properties

__all__ = ["Producer"]


class Producer:
    """Publishes an app's messages over a transport; every publish is confirmed and
    `mandatory`, so an unroutable message raises `UnroutableError`."""

    def __init__(
        self,
        transport: Transport,
        exchange: str,
        *,
        queue_type: QueueType,
        max_message_size: int,
        is_bound: Callable[[str], bool],
        tracker: Tracker | None = None,
        hooks: PublishHooks | None = None,
    ) -> None:
        self.transport = transport
        self.hooks = hooks or PublishHooks(())
        self.tracker = tracker
        self.exchange = exchange
        self.queue_type = queue_type
        self.max_message_size = max_message_size
        self.is_bound = is_bound

    def encode(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
    ) -> tuple[str, bytes, Properties, int]:
        """The routing key, body, properties and delay (ms) of a message to publish.

        Raises `UnroutableError` for a type without a routing key, `MessageTooLarge`.
        """
        key = type(msg).routing_key
        if not key:
            raise UnroutableError(f"{type(msg).__name__} declares no routing_key")
        body = msg.model_dump_json().encode()
        check_size(body, self.max_message_size)
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        delay_ms = quantize_delay_ms(seconds) if seconds and seconds > 0 else 0
        if delay_ms:
            headers = {**(headers or {}), DELAY: str(delay_ms)}
        properties = message_properties(
            key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        return key, body, properties, delay_ms

    async def publish(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        track: bool | timedelta | float = False,
    ) -> str:
        """Publish a typed message; returns its message id once the broker confirmed.

        A tracked message (`track`, or its task's `results=`) gets the `queued`
        status written first, so a reader never finds a later state before it."""
        ttl = self._track_ttl(type(msg).routing_key, track)
        if ttl is not None:
            headers = {**(headers or {}), RESULTS_TTL: int(ttl) if ttl.is_integer() else ttl}
        key, body, properties, delay_ms = self.encode(
            msg,
            headers=headers,
            delay=delay,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        if ttl is not None and self.tracker is not None:
            assert properties.message_id and properties.timestamp
            await self.tracker.queued(properties.message_id, key, ttl, properties.timestamp)
        await self.send(key, body, properties, delay_ms)
        return properties.message_id or ""

    def publish_many(
        self, messages: Messages, **options: Unpack[BulkOptions]
    ) -> AsyncIterator[PublishResult]:
        """`publish` for each of `messages` with up to `window` confirms in flight;
        yields each message's `PublishResult` in input order (see `bulk`)."""
        track = options.get("track", False)
        if track and self.tracker is None:
            self._track_ttl("", track)  # raises the ConfigurationError now, not per message
        return windowed(self.publish, messages, **options)

    def _track_ttl(self, key: str, track: bool | timedelta | float) -> float | None:
        if self.tracker is None:
            if track:
                raise ConfigurationError(
                    "publish(track=...) needs a results store: App(..., results='redis://...')"
                )
            return None
        asked = ttl_seconds(track, self.tracker.default_ttl)
        if asked is not None:
            return asked
        task_ttl = self.tracker.registry.results_ttl_for(key)
        return None if task_ttl is None else (task_ttl or self.tracker.default_ttl)

    async def send(self, key: str, body: bytes, properties: Properties, delay_ms: int) -> None:
        """Publish what `encode` made, through the delay queue when it has a delay."""
        if delay_ms:
            await self.hooks.send(
                key, properties, lambda: self._park(key, body, properties, delay_ms)
            )
        else:
            await self.hooks.send(
                key, properties, lambda: self.transport.send(self.exchange, key, body, properties)
            )

    async def _park(self, key: str, body: bytes, properties: Properties, delay_ms: int) -> None:
        """Put a message in the delay queue for `delay_ms` (its `rw-delay-ms` header
        selects it); it reaches the topic exchange when its TTL expires.

        The broker cannot tell now whether the routing key will be routable later,
        so it is checked against the app's own bindings.
        """
        if not self.is_bound(key):
            raise UnroutableError(
                f"delayed publish: no queue of this app is bound for routing key {key!r}"
            )
        await self.transport.ensure_queue(
            delay_queue_spec(self.exchange, delay_ms, self.queue_type)
        )
        await self.transport.send(delay_exchange_name(self.exchange), key, body, properties)
