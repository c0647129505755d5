"""Confirmed publishing on one robust channel: mandatory publishes with publisher
confirms, sent again after a reconnect within the publish timeout (never reported
as published unconfirmed), and expiring queues declared on demand.

A nack is taken for a broker that cannot take the message yet (a quorum queue between
two leaders, after a cluster node died) rather than a refusal: the message is sent
again, on a fresh channel, until the publish timeout. RabbitMQ 3.10 goes on nacking,
on a channel whose first publish to a quorum queue came while the queue's leader was
dead, every later publish to that queue until the channel is closed; and a publish sent
while the leader is being elected can go unconfirmed for good. So for a while after a
reconnect a confirm is waited for a few seconds at a time: one not back by then is
sent again on a fresh channel, within the publish timeout (a duplicate at worst)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection

from ..errors import ConnectionFailed, NotConfirmed, RabbitWorkerError
from ..topology import REDECLARE_S, QueueSpec
from ..wire import DIRECT_REPLY_TO, Properties
from .connection import BLOCKED, is_blocked, retry_across_reconnects
from .declare import declare_apart
from .errors import Op, translate
from .properties import to_amqp

__all__ = ["ConfirmedChannel"]

log = logging.getLogger("rabbitworker.publisher")

_RESEND_PAUSE = 0.05
_NACK_PAUSE = 0.2  # a new quorum queue leader is elected in about 0.4 s
_RECYCLE_EVERY = 0.5  # at most one fresh channel per this many seconds
_SETTLING_S = 30.0  # after a reconnect, a cluster may still be electing queue leaders
_SETTLING_CONFIRM_S = 3.0  # meanwhile, a confirm not back in this long is asked again


def _where(exchange: str, routing_key: str) -> str:
    return f"publish to {exchange or '(default)'}/{routing_key}"


class ConfirmedChannel:
    """Publishes on a channel opened with publisher confirms and returns raised."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractRobustChannel,
        *,
        timeout: float,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.timeout = timeout
        self._declared: dict[str, float] = {}
        self._declare_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._recycled_at = 0.0
        self._reconnected_at = -_SETTLING_S
        connection.reconnect_callbacks.add(self._on_reconnect)

    def _on_reconnect(self, *_: Any) -> None:
        self._reconnected_at = time.monotonic()

    def _just_reconnected(self) -> bool:
        """Whether the cluster may still be settling after a reconnect."""
        return time.monotonic() - self._reconnected_at < _SETTLING_S

    def _attempt_timeout(self, deadline: float) -> float:
        """How long to wait for one attempt's confirm: all the time left, but only a
        few seconds at a time while the cluster may be settling (see the module doc)."""
        left = max(0.001, deadline - time.monotonic())
        return min(left, _SETTLING_CONFIRM_S) if self._just_reconnected() else left

    def _confirm_lost(self, exc: BaseException, deadline: float) -> bool:
        """Whether `exc` is a confirm that did not come back while the cluster may be
        settling, with time left to send the message again."""
        return (
            isinstance(exc, TimeoutError)
            and not is_blocked(self.connection)
            and self._just_reconnected()
            and time.monotonic() < deadline
        )

    @staticmethod
    def _settling(exc: BaseException) -> bool:
        """Whether `exc` is a nack: the cluster is settling (see the module doc)."""
        return isinstance(exc, aiormq.exceptions.DeliveryError) and isinstance(
            exc.frame, aiormq.spec.Basic.Nack
        )

    async def _recycle(self) -> None:
        """Close the channel under the robust one, which opens a fresh one."""
        if time.monotonic() - self._recycled_at < _RECYCLE_EVERY:
            return
        self._recycled_at = time.monotonic()
        log.debug("a nack or a lost confirm: publishing on a fresh channel")
        try:
            # Bounded: a broker that lost a confirm may not answer the close either.
            async with asyncio.timeout(_RECYCLE_EVERY):
                underlay = await self.channel.get_underlay_channel()
                await underlay.close()
        except Exception as exc:  # closed meanwhile: the robust channel reopens anyway
            log.debug("closing the publishing channel: %s", exc)

    def close(self) -> None:
        """Mark closed: a publish waiting for a reconnect gives up."""
        self._closed.set()

    def _error(self, exc: BaseException, where: str) -> RabbitWorkerError | None:
        error = translate(exc, Op.PUBLISH, where)
        blocked = isinstance(exc, TimeoutError) and is_blocked(self.connection)
        if isinstance(error, NotConfirmed) and blocked:
            return NotConfirmed(f"{where}: {BLOCKED}; not confirmed within {self.timeout:g} s")
        if self._closed.is_set() and isinstance(error, ConnectionFailed | None):
            return ConnectionFailed(f"{where}: the app was closed before the broker confirmed")
        return error

    async def send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
        resend: bool = True,
    ) -> None:
        """Publish and wait for the broker's confirm (see `Transport.send`)."""
        deadline = time.monotonic() + self.timeout
        attempt = functools.partial(
            self._publish, exchange, routing_key, body, to_amqp(properties), mandatory, deadline
        )
        rpc = properties.reply_to == DIRECT_REPLY_TO
        if rpc:
            # The broker refuses a request to direct reply-to unless the reply
            # consumer is on the channel: after a reconnect, wait until it is back.
            await self._wait_ready(deadline)
        where = _where(exchange, routing_key)
        try:
            if self.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")
            # wait=False: wait for the confirm only, not also for the socket write
            # (a failed write closes the connection and fails the confirm with it).
            await attempt(wait=False)
            return
        except BaseException as exc:
            error = self._error(exc, where)
            if error is None:
                raise
            # Asked first: after a nack the channel is recycled, even with no resend.
            worth_it = await self._worth_resending(exc, error, deadline)
            if not worth_it or not resend or rpc or self._closed.is_set():
                raise error from exc
        await self._resend(attempt, where, properties.message_id, deadline, error)

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any,
        mandatory: bool,
        deadline: float,
        *,
        wait: bool = True,
    ) -> None:
        """One attempt: publish on the channel under the robust one, and wait for
        its confirm (see `_attempt_timeout`)."""
        underlay = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        await underlay.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            timeout=self._attempt_timeout(deadline),
            wait=wait,
        )

    async def _worth_resending(
        self, exc: BaseException, error: RabbitWorkerError, deadline: float
    ) -> bool:
        """Whether `exc` (mapped to `error`) is a lost connection, a nack or a lost
        confirm, after which the message is sent again; after a nack or a lost confirm,
        on a fresh channel (see the module doc)."""
        if self._settling(exc) or self._confirm_lost(exc, deadline):
            await self._recycle()
            return True
        return isinstance(error, ConnectionFailed) and not error.permanent

    async def _wait_ready(self, deadline: float) -> None:
        """Wait for the robust channel to be back, unless closed meanwhile."""
        ready = asyncio.ensure_future(self.channel.ready())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait(
                {ready, closed},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
            closed.cancel()
        if self._closed.is_set():
            raise ConnectionFailed("the app was closed before the broker confirmed the message")
        if not ready.done() or ready.cancelled():
            raise ConnectionFailed(
                f"the connection to the broker was not back within {self.timeout:g} s "
                "(publish_timeout)"
            )

    async def _resend(
        self,
        attempt: Callable[[], Awaitable[None]],
        where: str,
        message_id: str | None,
        deadline: float,
        error: RabbitWorkerError,
    ) -> None:
        """Make `attempt` again once the channel is back, until it is confirmed or
        `deadline` passes; raises `NotConfirmed` or `ConnectionFailed` then.

        The broker may have taken the first copy and only its confirm was lost, so
        the message can arrive twice (same id): at least once, never zero.
        """
        log.debug("message %s: publishing again once reconnected", message_id)
        if isinstance(error, NotConfirmed):
            await asyncio.sleep(_NACK_PAUSE)
        while True:
            try:
                await self._wait_ready(deadline)
                await attempt()
                return
            except ConnectionFailed as exc:  # not back in time, or closed meanwhile
                error = exc
                break
            except Exception as exc:
                mapped = self._error(exc, where)
                if mapped is None:
                    raise
                if not await self._worth_resending(exc, mapped, deadline):
                    raise mapped from exc
                error = mapped
            if time.monotonic() >= deadline:
                break
            # The channel said ready and closed again (the link is flapping), or the
            # cluster still nacks.
            pause = _NACK_PAUSE if isinstance(error, NotConfirmed) else _RESEND_PAUSE
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        if isinstance(error, NotConfirmed):
            raise error
        raise ConnectionFailed(
            f"{where}: the connection to the broker was lost and not restored within "
            f"{self.timeout:g} s (publish_timeout); message {message_id} was not confirmed"
        ) from error

    async def ensure_queue(self, spec: QueueSpec, *, force: bool = False) -> None:
        """Declare an expiring queue unless declared recently; redeclaring resets its
        expiry timer, so it cannot expire while in use."""
        now = time.monotonic()
        last = self._declared.get(spec.name)
        if not force and last is not None and now - last < REDECLARE_S:
            return
        async with self._declare_lock:

            async def declare() -> None:
                # On a channel of its own: a refusal (a queue that exists with other
                # arguments) must not close the publishing channel and its confirms.
                underlay = await self.channel.get_underlay_channel()
                await declare_apart(underlay.connection, spec)

            # Like a publish, it waits out a short outage, within the publish timeout.
            await retry_across_reconnects(
                self.connection, f"declare {spec.name}", declare, timeout=self.timeout
            )
            self._declared[spec.name] = now
