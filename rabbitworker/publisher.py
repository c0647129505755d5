"""Confirmed publishing: the wire encoding of a message, mandatory publishes with
publisher confirms, and delayed publishing through broker-side delay queues."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustChannel

from .connection import is_connection_lost
from .errors import ConnectionFailed, MessageTooLarge, UnroutableError, translate_broker_errors
from .message import TaskMessage
from .topology import (
    DELAY_HEADER,
    DELAY_REDECLARE_S,
    QueueSpec,
    QueueType,
    declare_queue,
    delay_exchange_name,
    delay_queue_spec,
    quantize_delay_ms,
)

__all__ = ["Publisher", "build_message"]

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT

log = logging.getLogger("rabbitworker.publisher")

_RESEND_PAUSE = 0.05


def build_message(
    body: bytes,
    *,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> aio_pika.Message:
    """An AMQP message in rabbitworker's wire format (see the README's table)."""
    all_headers: dict[str, Any] = {"x-attempt": 1}
    if headers:
        all_headers.update(headers)
    return aio_pika.Message(
        body,
        content_type="application/json",
        type=routing_key,
        message_id=message_id or str(uuid.uuid4()),
        timestamp=datetime.now(UTC),
        delivery_mode=PERSISTENT,
        headers=all_headers,
        correlation_id=correlation_id,
        reply_to=reply_to,
    )


class Publisher:
    """Publishes on one channel opened with publisher confirms and returns raised.

    Every publish is `mandatory`: a message no queue is bound for raises
    `UnroutableError`; a nack or a missing confirm raises `NotConfirmed`.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        exchange: str,
        *,
        queue_type: QueueType,
        timeout: float,
        max_message_size: int,
        is_bound: Callable[[str], bool],
    ) -> None:
        self.channel = channel
        self.exchange_name = exchange
        self.queue_type = queue_type
        self.timeout = timeout
        self.max_message_size = max_message_size
        self.is_bound = is_bound
        self._exchanges: dict[str, AbstractExchange] = {}
        self._declared: dict[str, float] = {}
        self._declare_lock = asyncio.Lock()
        self._closed = asyncio.Event()

    def close(self) -> None:
        """Mark the publisher closed: a publish waiting for a reconnect gives up."""
        self._closed.set()

    async def _wait_ready(self) -> None:
        """Wait for the robust channel to be back, unless the app is closed meanwhile."""
        assert isinstance(self.channel, AbstractRobustChannel)
        ready = asyncio.ensure_future(self.channel.ready())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            closed.cancel()
        if self._closed.is_set():
            raise ConnectionFailed("the app was closed before the broker confirmed the message")

    async def exchange(self, name: str) -> AbstractExchange:
        try:
            return self._exchanges[name]
        except KeyError:
            if name == "":
                ex = self.channel.default_exchange
            else:
                ex = await self.channel.get_exchange(name, ensure=False)
            self._exchanges[name] = ex
            return ex

    async def send(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        *,
        mandatory: bool = True,
        limit_size: bool = True,
        resend: bool = True,
    ) -> None:
        """Publish a built message and wait for the broker's confirm.

        `limit_size=False` is for moving a message the broker already holds (to its
        dead-letter queue): refusing it there would leave it looping in its queue.
        `resend=False` raises `ConnectionFailed` at once when the connection drops,
        instead of publishing again after the reconnect (an RPC request's reply could
        not reach its caller across a reconnect anyway).
        """
        if limit_size and len(message.body) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message.body)} bytes is over the maximum of "
                f"{self.max_message_size} (max_message_size)"
            )
        ex = self._exchanges.get(exchange) or await self.exchange(exchange)
        started = time.monotonic()
        try:
            with translate_broker_errors(f"publish to {exchange or '(default)'}/{routing_key}"):
                await ex.publish(message, routing_key, mandatory=mandatory, timeout=self.timeout)
        except ConnectionFailed as exc:
            if self._closed.is_set():
                raise ConnectionFailed(
                    f"the app was closed before the broker confirmed message {message.message_id}"
                ) from exc
            if not resend or not is_connection_lost(exc):
                raise
            await self._resend_after_reconnect(
                ex, routing_key, message, mandatory, started + self.timeout, exc
            )
        except Exception as exc:
            # Closing the connection fails pending confirms with whatever the client
            # library was given, a bare Exception included.
            if self._closed.is_set():
                raise ConnectionFailed(
                    f"the app was closed before the broker confirmed message {message.message_id}"
                ) from exc
            raise

    async def _resend_after_reconnect(
        self,
        ex: AbstractExchange,
        routing_key: str,
        message: aio_pika.Message,
        mandatory: bool,
        deadline: float,
        error: ConnectionFailed,
    ) -> None:
        """Publish again once the robust channel is back, all before `deadline`.

        The broker may have taken the first copy and only its confirm was lost, so
        the message can arrive twice (same message id): at least once, never zero.
        Raises `ConnectionFailed` when the connection is not back in time.
        """
        where = f"publish to {ex.name or '(default)'}/{routing_key}"
        log.warning(
            "message %s: connection lost before the broker confirmed it; "
            "publishing again once reconnected",
            message.message_id,
        )
        while isinstance(self.channel, AbstractRobustChannel):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._wait_ready()
                    with translate_broker_errors(where):
                        await ex.publish(
                            message, routing_key, mandatory=mandatory, timeout=remaining
                        )
                return
            except TimeoutError:
                break
            except ConnectionFailed as exc:
                if not is_connection_lost(exc):
                    raise
                error = exc
            # The channel said ready and closed again: the link is flapping.
            await asyncio.sleep(_RESEND_PAUSE)
        raise ConnectionFailed(
            f"{where}: the connection to the broker was lost and not restored within "
            f"{self.timeout:g} s (publish_timeout); message {message.message_id} "
            "was not confirmed"
        ) from error

    async def publish(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        resend: bool = True,
    ) -> str:
        """Publish a typed message; returns its message id once the broker confirmed."""
        key = type(msg).routing_key
        if not key:
            raise UnroutableError(f"{type(msg).__name__} declares no routing_key")
        message = build_message(
            msg.model_dump_json().encode(),
            routing_key=key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if seconds and seconds > 0:
            await self.send_delayed(message, key, quantize_delay_ms(seconds))
        else:
            await self.send(self.exchange_name, key, message, resend=resend)
        return message.message_id or ""

    async def send_delayed(
        self, message: aio_pika.Message, routing_key: str, delay_ms: int
    ) -> None:
        """Park a message in a delay queue; it reaches the topic exchange on expiry.

        The broker cannot tell at this point whether the routing key will be
        routable later, so it is checked against the app's own bindings.
        """
        if not self.is_bound(routing_key):
            raise UnroutableError(
                f"delayed publish: no queue of this app is bound for routing key {routing_key!r}"
            )
        spec = delay_queue_spec(self.exchange_name, delay_ms, self.queue_type)
        await self.ensure_queue(spec)
        assert message.headers is not None
        message.headers[DELAY_HEADER] = str(delay_ms)
        await self.send(delay_exchange_name(self.exchange_name), routing_key, message)

    async def ensure_queue(self, spec: QueueSpec) -> None:
        """Declare an expiring delay or retry queue if not declared recently.

        Redeclaring resets its expiry timer, so it cannot expire while in use.
        """
        last = self._declared.get(spec.name)
        now = time.monotonic()
        if last is not None and now - last < DELAY_REDECLARE_S:
            return
        async with self._declare_lock:
            with translate_broker_errors(f"declare {spec.name}"):
                # A robust channel waits for a reconnect without limit; we do not.
                async with asyncio.timeout(self.timeout):
                    await declare_queue(self.channel, spec)
            self._declared[spec.name] = now

    def forget_queue(self, name: str) -> None:
        self._declared.pop(name, None)
