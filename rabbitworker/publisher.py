"""Confirmed publishing: the wire encoding of a message, mandatory publishes with
publisher confirms, and delayed publishing through broker-side delay queues."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aio_pika
import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractRobustChannel

from .connection import is_connection_lost
from .errors import (
    ConnectionFailed,
    MessageTooLarge,
    UnroutableError,
    translate_broker_error,
    translate_broker_errors,
)
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

__all__ = ["Publisher", "build_message", "new_message_id", "wire_properties"]

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
JSON = "application/json"

log = logging.getLogger("rabbitworker.publisher")

_RESEND_PAUSE = 0.05

# The RFC 4122 variant bits (10xx) applied to a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_message_id() -> str:
    """A random (version 4) UUID as its usual 36-character string.

    Formatted straight from the random hex: `str(uuid.uuid4())` takes twice as long,
    which shows on the publish path.
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def wire_properties(
    routing_key: str,
    *,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> aiormq.spec.Basic.Properties:
    """The AMQP properties of rabbitworker's wire format, the same as `build_message`
    gives, built without an aio-pika `Message` (which costs more than the rest of a
    publish's own work) for the publish path."""
    all_headers: dict[str, Any] = {"x-attempt": 1}
    if headers:
        all_headers.update(headers)
    return aiormq.spec.Basic.Properties(
        content_type=JSON,
        headers=all_headers,
        delivery_mode=PERSISTENT,
        # aio-pika's Message always sends priority 0: kept, for the same bytes on the wire.
        priority=0,
        correlation_id=correlation_id,
        reply_to=reply_to,
        message_id=message_id or new_message_id(),
        timestamp=datetime.now(UTC),
        message_type=routing_key,
    )


def build_message(
    body: bytes,
    *,
    routing_key: str,
    headers: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> aio_pika.Message:
    """The same wire format as an aio-pika `Message`, for code that publishes raw."""
    p = wire_properties(
        routing_key,
        headers=headers,
        message_id=message_id,
        correlation_id=correlation_id,
        reply_to=reply_to,
    )
    return aio_pika.Message(
        body,
        content_type=p.content_type,
        type=p.message_type,
        message_id=p.message_id,
        timestamp=p.timestamp,
        delivery_mode=PERSISTENT,
        headers=p.headers,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
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
        if limit_size:
            self.check_size(message.body)
        await self.send_raw(
            exchange,
            routing_key,
            message.body,
            message.properties,
            mandatory=mandatory,
            resend=resend,
        )

    def check_size(self, body: bytes) -> None:
        if len(body) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(body)} bytes is over the maximum of "
                f"{self.max_message_size} (max_message_size)"
            )

    async def send_raw(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        *,
        mandatory: bool = True,
        resend: bool = True,
    ) -> None:
        """`send` for a body and its AMQP properties, on aiormq's channel directly.

        What aio-pika's `Exchange.publish` adds on top (a `Message` to build and turn
        into properties, an exchange object per name) is a tenth of a publish's
        client CPU; the robust channel still hands over whichever channel is current,
        so a publish after a reconnect goes out on the new one.
        """
        started = time.monotonic()
        channel = self.channel
        try:
            try:
                # The checks aio-pika's Exchange.publish makes before publishing.
                if channel.is_closed:
                    raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
                # wait=False: do not wait for the frame's socket write, only for the
                # confirm. The confirm comes after the write anyway, a write that fails
                # closes the connection and fails the confirm with it, and skipping the
                # wait saves a future and a turn of the event loop per publish.
                await underlay.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=mandatory,
                    timeout=self.timeout,
                    wait=False,
                )
            except BaseException as exc:
                # translate_broker_errors, without a context manager on every publish.
                error = translate_broker_error(exc, _where(exchange, routing_key))
                if error is None:
                    raise
                raise error from exc
        except ConnectionFailed as exc:
            if self._closed.is_set():
                raise ConnectionFailed(
                    "the app was closed before the broker confirmed message "
                    f"{properties.message_id}"
                ) from exc
            if not resend or not is_connection_lost(exc):
                raise
            await self._resend_after_reconnect(
                exchange, routing_key, body, properties, mandatory, started + self.timeout, exc
            )
        except Exception as exc:
            # Closing the connection fails pending confirms with whatever the client
            # library was given, a bare Exception included.
            if self._closed.is_set():
                raise ConnectionFailed(
                    "the app was closed before the broker confirmed message "
                    f"{properties.message_id}"
                ) from exc
            raise

    async def _resend_after_reconnect(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        mandatory: bool,
        deadline: float,
        error: ConnectionFailed,
    ) -> None:
        """Publish again once the robust channel is back, all before `deadline`.

        The broker may have taken the first copy and only its confirm was lost, so
        the message can arrive twice (same message id): at least once, never zero.
        Raises `ConnectionFailed` when the connection is not back in time.
        """
        where = _where(exchange, routing_key)
        log.warning(
            "message %s: connection lost before the broker confirmed it; "
            "publishing again once reconnected",
            properties.message_id,
        )
        while isinstance(self.channel, AbstractRobustChannel):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._wait_ready()
                    with translate_broker_errors(where):
                        underlay = await self.channel.get_underlay_channel()
                        await underlay.basic_publish(
                            body,
                            exchange=exchange,
                            routing_key=routing_key,
                            properties=properties,
                            mandatory=mandatory,
                            timeout=remaining,
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
            f"{self.timeout:g} s (publish_timeout); message {properties.message_id} "
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
        body = msg.model_dump_json().encode()
        self.check_size(body)
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        delay_ms = quantize_delay_ms(seconds) if seconds and seconds > 0 else 0
        if delay_ms:
            headers = {**(headers or {}), DELAY_HEADER: str(delay_ms)}
        properties = wire_properties(
            key,
            headers=headers,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        if delay_ms:
            await self._park(key, body, properties, delay_ms)
        else:
            await self.send_raw(self.exchange_name, key, body, properties, resend=resend)
        return properties.message_id or ""

    async def _park(
        self,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        delay_ms: int,
    ) -> None:
        """Put a message in the delay queue for `delay_ms` (its `rw-delay-ms` header
        selects it); it reaches the topic exchange when its TTL expires.

        The broker cannot tell at this point whether the routing key will be
        routable later, so it is checked against the app's own bindings.
        """
        if not self.is_bound(routing_key):
            raise UnroutableError(
                f"delayed publish: no queue of this app is bound for routing key {routing_key!r}"
            )
        await self.ensure_queue(delay_queue_spec(self.exchange_name, delay_ms, self.queue_type))
        await self.send_raw(delay_exchange_name(self.exchange_name), routing_key, body, properties)

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


def _where(exchange: str, routing_key: str) -> str:
    return f"publish to {exchange or '(default)'}/{routing_key}"
