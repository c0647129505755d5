"""Connecting: a robust aio-pika connection over the URL's hosts (tried in a shuffled
order, and on to the next host at each reconnect), tried for up to the connect timeout
unless the broker's answer cannot change (wrong password, unknown vhost), and an
outage reported once, in rabbitworker's words, however long it lasts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url

from ..errors import ConnectionFailed, RabbitWorkerError
from ..urls import BrokerURL
from .errors import Op, broker_text, translate
from .failover import FailoverConnection, host_label, host_order, quiet_attempt_noise

__all__ = [
    "BLOCKED",
    "OutageReport",
    "connect",
    "is_blocked",
    "quiet_reconnect_noise",
    "retry_across_reconnects",
]

T = TypeVar("T")

log = logging.getLogger("rabbitworker.connection")

# aio-pika waits 5 s between reconnect attempts by default; a worker should be
# back within about a second of the broker. A `reconnect_interval` in the URL wins.
RECONNECT_INTERVAL = 1.0
_RETRY_PAUSE = 0.1
_MAX_PAUSE = 2.0
# One attempt may take at most this long (a broker that accepts and never answers),
# so that a broker that comes back is tried again before the connect timeout.
_ATTEMPT_TIMEOUT = 5.0
_LAST_ATTEMPT = 0.25  # less time than this left: not worth another attempt

BLOCKED = "the broker is blocking publishers (a memory or disk alarm on the broker)"


def is_blocked(connection: AbstractRobustConnection) -> bool:
    """Whether the broker told this connection it blocks publishers (a memory or
    disk alarm). aiormq keeps that in a private event: read here alone."""
    underlay = connection.transport
    if underlay is None:  # not connected now: nothing to be blocked
        return False
    event = getattr(underlay.connection, "_Connection__connection_unblocked", None)
    return isinstance(event, asyncio.Event) and not event.is_set()


def _connect_error(exc: BaseException, where: str) -> RabbitWorkerError:
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
    order = host_order(url)
    attempt = 0
    reason = ""
    while True:
        # Each attempt on the next host; the connection goes on from there when it drops.
        first = attempt % len(order)
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            connection = await _attempt(
                order[first:] + order[:first],
                min(remaining, _ATTEMPT_TIMEOUT),
                heartbeat,
                name,
                url,
            )
            return connection
        except Exception as exc:  # the library raises many kinds; all mean "not connected"
            error = _connect_error(exc, where)
            if isinstance(error, ConnectionFailed) and error.permanent:
                raise error from None
            # A refusal or a failed handshake says more than a timeout (which may
            # only mean that the last attempt had little time).
            if not reason or not isinstance(exc, TimeoutError):
                reason = str(error).removeprefix(f"{where}: ")
            remaining = deadline - time.monotonic()
            if remaining < _LAST_ATTEMPT:
                raise ConnectionFailed(f"{where} within {timeout:g} s: {reason}") from None
            # The last pause ends at the deadline, for one more attempt right then.
            wait = min(pause, remaining - _LAST_ATTEMPT)
            log.debug("%s; trying again in %.1f s", error, wait)
            await asyncio.sleep(wait)
            pause = min(pause * 2, _MAX_PAUSE)


async def _attempt(
    hosts: list[int], timeout: float, heartbeat: int, name: str, url: BrokerURL
) -> FailoverConnection:
    """One connection attempt on `url.hosts[hosts[0]]`, as `aio_pika.connect_robust`
    makes it (reconnecting to `hosts` in turn later), but closed when it fails or is
    cancelled: aio-pika would go on reconnecting in the background, or close it when
    garbage-collected, on whatever event loop runs then."""
    options: dict[str, Any] = {"heartbeat": heartbeat, **_reconnect_options(url)}
    targets = [(make_url(url.url_for(i), **options), host_label(url, i)) for i in hosts]
    connection = FailoverConnection(targets, client_properties={"connection_name": name}, **options)
    try:
        # Bounded here too: the deadline holds whichever step of the handshake the
        # broker stops answering in.
        async with asyncio.timeout(timeout):
            await connection.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):  # the reason it failed is what matters
            await connection.close()
        raise
    return connection


def _reconnect_options(url: BrokerURL) -> dict[str, Any]:
    return {} if "reconnect_interval=" in url.query else {"reconnect_interval": RECONNECT_INTERVAL}


class OutageReport:
    """Logs a connection loss once and its end once: which host was lost, which host
    the connection is back on, and how long it lasted.

    aio-pika retries every `reconnect_interval` and would report each attempt;
    an operator needs two lines per outage, not one a second.
    """

    def __init__(self, connection: AbstractRobustConnection, where: str, *, hosts: int = 1) -> None:
        self.connection = connection
        self.where = where
        self.hosts = hosts
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
        log.warning(
            "connection to %s lost (%s); reconnecting%s",
            self._host(),
            reason,
            f" (hosts: {self.where})" if self.hosts > 1 else "",
        )
        self._tell(False)

    def _on_reconnect(self, *_: Any) -> None:
        lost_at, self.lost_at = self.lost_at, None
        took = f" after {time.monotonic() - lost_at:.1f} s" if lost_at is not None else ""
        log.warning("reconnected to %s%s; consumers restored", self._host(), took)
        self._tell(True)

    def _host(self) -> str:
        # One host: the whole masked URL, as before; several: the one in question.
        if self.hosts > 1 and isinstance(self.connection, FailoverConnection):
            return self.connection.host
        return self.where

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
    seconds in all. Raises `ConnectionFailed` when it is not back in time, or the
    broker does not answer in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # A robust channel waits for its answer without limit; we do not.
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                return await step()
        except Exception as exc:
            error = _setup_error(connection, exc, what, timeout)
            if error is None:
                raise
            remaining = deadline - time.monotonic()
            lost = isinstance(error, ConnectionFailed) and not error.permanent
            if not lost or remaining <= 0 or connection.is_closed:
                raise error from exc
            log.debug("%s: connection lost; trying again once reconnected", what)
            await _back(connection, remaining, what, timeout, exc)


def _setup_error(
    connection: AbstractRobustConnection, exc: BaseException, what: str, timeout: float
) -> RabbitWorkerError | None:
    if isinstance(exc, TimeoutError):
        # A blocked connection is not read from at all, declares included.
        why = f"{BLOCKED}; no answer" if is_blocked(connection) else "the broker did not answer"
        return ConnectionFailed(f"{what}: {why} within {timeout:g} s")
    return translate(exc, Op.SETUP, what)


async def _back(
    connection: AbstractRobustConnection,
    remaining: float,
    what: str,
    timeout: float,
    cause: BaseException,
) -> None:
    """Wait for the robust connection to be back, for up to `remaining` seconds."""
    await asyncio.sleep(_RETRY_PAUSE)
    try:
        async with asyncio.timeout(remaining):
            await connection.ready()
    except TimeoutError:
        raise ConnectionFailed(
            f"{what}: the connection was lost and not back within {timeout:g} s"
        ) from cause


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
    """Install the filters on aio-pika's callback and reconnect loggers (idempotent)."""
    quiet_attempt_noise()
    logger = logging.getLogger("aio_pika.tools")
    if not any(isinstance(f, _QuietReconnects) for f in logger.filters):
        logger.addFilter(_QuietReconnects())
