"""Connecting to the broker: a robust aio-pika connection, retried with back-off
until the connect timeout, with failures reported without the password."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection

from .errors import ConnectionFailed, translate_broker_errors
from .settings import mask_url

__all__ = ["connect", "is_connection_lost", "retry_across_reconnects"]

T = TypeVar("T")

log = logging.getLogger("rabbitworker.connection")

# aio-pika waits 5 s between reconnect attempts by default; a worker should be
# back within about a second of the broker. A `reconnect_interval` in the URL wins.
RECONNECT_INTERVAL = 1.0

# What an operation fails with when the link, not the broker, is the problem.
_CONNECTION_LOST = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
)
_RETRY_PAUSE = 0.1


async def connect(
    url: str, *, timeout: float = 10.0, heartbeat: int = 60, name: str = "rabbitworker"
) -> AbstractRobustConnection:
    """Open a robust connection, retrying for up to `timeout` seconds.

    Raises `ConnectionFailed` naming the (masked) URL and the last reason.
    """
    deadline = time.monotonic() + timeout
    pause = 0.1
    while True:
        remaining = deadline - time.monotonic()
        try:
            connection: AbstractRobustConnection = await aio_pika.connect_robust(
                url,
                timeout=max(0.5, min(remaining, 5.0)),
                client_properties={"connection_name": name},
                heartbeat=heartbeat,
                **_reconnect_options(url),
            )
            return connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aio-pika raises many kinds here; all mean "not connected"
            reason = _reason(exc, url)
            if "ACCESS_REFUSED" in reason or "authentication" in reason.lower():
                raise ConnectionFailed(
                    f"cannot connect to {mask_url(url)}: authentication failed"
                ) from None
            if time.monotonic() + pause >= deadline:
                raise ConnectionFailed(
                    f"cannot connect to {mask_url(url)} within {timeout:g} s: {reason}"
                ) from None
            log.debug(
                "broker %s not reachable (%s); retrying in %.1f s", mask_url(url), reason, pause
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)


def is_connection_lost(exc: BaseException) -> bool:
    """Whether `exc`, or the client error it was translated from, means the
    connection dropped (as opposed to the broker refusing the operation)."""
    return isinstance(exc, _CONNECTION_LOST) or isinstance(exc.__cause__, _CONNECTION_LOST)


async def retry_across_reconnects(
    connection: AbstractRobustConnection,
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    timeout: float,
) -> T:
    """Run `step`; if the connection drops meanwhile, wait for the robust connection
    to come back and run it again, for up to `timeout` seconds in all.

    For setup steps (opening channels, declaring, consuming) that a cut can
    interrupt. Raises `ConnectionFailed` when the connection is not back in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with translate_broker_errors(what):
                return await step()
        except ConnectionFailed as exc:
            remaining = deadline - time.monotonic()
            if not is_connection_lost(exc) or remaining <= 0 or connection.is_closed:
                raise
            log.warning("%s: connection lost; trying again once reconnected", what)
            await asyncio.sleep(_RETRY_PAUSE)
            try:
                async with asyncio.timeout(remaining):
                    await connection.ready()
            except TimeoutError:
                raise ConnectionFailed(
                    f"{what}: the connection was lost and not back within {timeout:g} s"
                ) from exc


def _reconnect_options(url: str) -> dict[str, Any]:
    query = urlsplit(url).query
    return {} if "reconnect_interval=" in query else {"reconnect_interval": RECONNECT_INTERVAL}


def _reason(exc: BaseException, url: str) -> str:
    text = (str(exc) or type(exc).__name__).split("\n")[0][:300]
    # Client errors sometimes repeat the URL, password included.
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text
