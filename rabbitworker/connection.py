"""Connecting to the broker: a robust aio-pika connection, retried with back-off
until the connect timeout, with failures reported without the password."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from .errors import ConnectionFailed
from .settings import mask_url

__all__ = ["connect"]

log = logging.getLogger("rabbitworker.connection")


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
            return await aio_pika.connect_robust(
                url,
                timeout=max(0.5, min(remaining, 5.0)),
                client_properties={"connection_name": name},
                heartbeat=heartbeat,
            )
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


def _reason(exc: BaseException, url: str) -> str:
    text = (str(exc) or type(exc).__name__).split("\n")[0][:300]
    # Client errors sometimes repeat the URL, password included.
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text
