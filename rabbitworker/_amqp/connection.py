"""Connecting: a robust aio-pika connection, tried for up to the connect timeout
unless the broker's answer cannot change (wrong password, unknown vhost), and an
outage reported once, in rabbitworker's words, however long it lasts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractRobustConnection, TimeoutType

from ..errors import ConnectionFailed, RabbitWorkerError
from ..urls import BrokerURL
from .errors import Op, broker_text, translate

__all__ = ["OutageReport", "connect", "quiet_reconnect_noise", "retry_across_reconnects"]

T = TypeVar("T")

log = logging.getLogger("rabbitworker.connection")

# aio-pika waits 5 s between reconnect attempts by default; a worker should be
# back within about a second of the broker. A `reconnect_interval` in the URL wins.
RECONNECT_INTERVAL = 1.0
_RETRY_PAUSE = 0.1
_MAX_PAUSE = 2.0


def _connect_error(exc: BaseException, where: str) -> RabbitWorkerError:
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # The broker answered connection.open with a close: no such vhost, or the
        # user may not use it. aiormq keeps only the frame's repr, not its text.
        return ConnectionFailed(
            f"{where}: the broker refused to open the vhost (it does not exist, or the "
            "user has no permission on it)",
            permanent=True,
        )
    error = translate(exc, Op.CONNECT, where)
    return error if error is not None else ConnectionFailed(f"{where}: {broker_text(exc)}")


async def connect(
    url: BrokerURL, *, timeout: float, heartbeat: int, name: str
) -> AbstractRobustConnection:
    """Open a robust connection, trying for up to `timeout` seconds.

    Raises `ConnectionFailed` naming the masked URL and the reason: at once when
    the broker refused for good (`.permanent`), else at the deadline.
    """
    deadline = time.monotonic() + timeout
    pause = _RETRY_PAUSE
    where = f"cannot connect to {url.masked}"
    attempt = 0
    while True:
        target = url.url_for(attempt % len(url.hosts))
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            connection: AbstractRobustConnection = await aio_pika.connect_robust(
                target,
                timeout=max(0.5, min(remaining, 5.0)),
                client_properties={"connection_name": name},
                heartbeat=heartbeat,
                connection_class=_RobustConnection,
                **_reconnect_options(url),
            )
            return connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the library raises many kinds; all mean "not connected"
            error = _connect_error(exc, where)
            if isinstance(error, ConnectionFailed) and error.permanent:
                raise error from None
            if time.monotonic() + pause >= deadline:
                reason = str(error).removeprefix(f"{where}: ")
                raise ConnectionFailed(f"{where} within {timeout:g} s: {reason}") from None
            log.debug("%s; trying again in %.1f s", error, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)


class _RobustConnection(aio_pika.RobustConnection):
    """Closes itself when its first connect fails or is cancelled. aio-pika leaves
    the reconnect task running otherwise: one cancelled mid-handshake (a SIGTERM
    while the worker starts) swallows the cancel and keeps the event loop, and so
    the process, from ever finishing."""

    async def connect(self, timeout: TimeoutType = None) -> None:
        try:
            await super().connect(timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.close())
            raise


def _reconnect_options(url: BrokerURL) -> dict[str, Any]:
    return {} if "reconnect_interval=" in url.query else {"reconnect_interval": RECONNECT_INTERVAL}


class OutageReport:
    """Logs a connection loss once and its end once, with how long it lasted.

    aio-pika retries every `reconnect_interval` and would report each attempt;
    an operator needs two lines per outage, not one a second.
    """

    def __init__(self, connection: AbstractRobustConnection, where: str) -> None:
        self.where = where
        self.lost_at: float | None = None
        self.outages = 0
        self.listeners: list[Callable[[bool], None]] = []
        self.closing = False  # set before our own close(), which is not an outage
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)

    @property
    def connected(self) -> bool:
        return self.lost_at is None

    def _on_close(self, _: Any, exc: BaseException | None = None) -> None:
        if self.closing or self.lost_at is not None:
            return  # our own close(), or a failed reconnect attempt: not news
        self.lost_at = time.monotonic()
        self.outages += 1
        reason = broker_text(exc) if exc is not None else "closed"
        log.warning("connection to %s lost (%s); reconnecting", self.where, reason)
        self._tell(False)

    def _on_reconnect(self, *_: Any) -> None:
        lost_at, self.lost_at = self.lost_at, None
        took = f" after {time.monotonic() - lost_at:.1f} s" if lost_at is not None else ""
        log.warning("reconnected to %s%s; consumers restored", self.where, took)
        self._tell(True)

    def _tell(self, connected: bool) -> None:
        for listener in self.listeners:
            try:
                listener(connected)
            except Exception:
                log.exception("connection listener failed")


async def retry_across_reconnects(
    connection: AbstractRobustConnection,
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    timeout: float,
) -> T:
    """Run a setup `step` (open a channel, declare, consume); if the connection
    drops meanwhile, wait for it to come back and run it again, for up to `timeout`
    seconds in all. Raises `ConnectionFailed` when it is not back in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await step()
        except Exception as exc:
            error = translate(exc, Op.SETUP, what)
            if error is None:
                raise
            remaining = deadline - time.monotonic()
            lost = isinstance(error, ConnectionFailed) and not error.permanent
            if not lost or remaining <= 0 or connection.is_closed:
                raise error from exc
            log.debug("%s: connection lost; trying again once reconnected", what)
            await asyncio.sleep(_RETRY_PAUSE)
            try:
                async with asyncio.timeout(remaining):
                    await connection.ready()
            except TimeoutError:
                raise ConnectionFailed(
                    f"{what}: the connection was lost and not back within {timeout:g} s"
                ) from exc


class _QuietReconnects(logging.Filter):
    """Drops aio-pika's ERROR lines for callbacks that fail only because the
    connection is down (a robust channel trying to reopen mid-outage): the outage is
    reported once by `OutageReport`, and aio-pika retries by itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.getMessage().startswith("Callback"):
            return True
        text = record.getMessage()
        return not ("ChannelInvalidStateError" in text or text.rstrip().endswith(" closed"))


def quiet_reconnect_noise() -> None:
    """Install the filter on aio-pika's callback logger (idempotent)."""
    logger = logging.getLogger("aio_pika.tools")
    if not any(isinstance(f, _QuietReconnects) for f in logger.filters):
        logger.addFilter(_QuietReconnects())
