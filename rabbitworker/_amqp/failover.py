"""Failover across the hosts of one broker URL: the order they are tried in (shuffled,
so that a fleet spreads over a cluster) and a robust connection that goes on to the
next host at each reconnect attempt, so that a dead node is left for a live one."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import UnderlayConnection
from yarl import URL

from ..urls import BrokerURL

__all__ = ["FailoverConnection", "host_label", "host_order", "quiet_attempt_noise"]


def host_order(url: BrokerURL, *, rng: random.Random | None = None) -> list[int]:
    """The indexes of `url.hosts` in a random order: each client of a fleet starts on a
    different node, and after a loss the survivors share the load."""
    order = list(range(len(url.hosts)))
    (rng or random).shuffle(order)
    return order


def host_label(url: BrokerURL, index: int) -> str:
    """`host:port` of `url.hosts[index]` (IPv6 in brackets), for log lines."""
    host, port = url.hosts[index]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over several hosts, tried in the order given: each new
    connection attempt after the first (after a failed one, or after the connection
    was lost) goes to the next host, round and round.

    aio-pika connects to `self.url` and clears `self.transport` just before each
    attempt (`RobustConnection.__connect_transport`, aio-pika 10.2): that assignment is
    where the next host is chosen, which keeps aio-pika's own reconnect loop, its
    channel and consumer restoration, untouched.
    """

    def __init__(self, targets: Sequence[tuple[URL, str]], **kwargs: Any) -> None:
        if not targets:
            raise ValueError("no host to connect to")
        self._targets = list(targets)
        self._index = 0
        self._cleared = 0  # how often `transport` was cleared: once by __init__, then per attempt
        self._transport: UnderlayConnection | None = None
        super().__init__(self._targets[0][0], **kwargs)

    @property
    def host(self) -> str:
        """`host:port` this connection is on, or tries next when it is down."""
        return self._targets[self._index][1]

    @property
    def transport(self) -> UnderlayConnection | None:
        return self._transport

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        if value is None and not self._close_called_safe():
            self._cleared += 1
            if self._cleared > 2:  # not __init__, not the first attempt: another host
                self._index = (self._index + 1) % len(self._targets)
                self.url = self._targets[self._index][0]
        self._transport = value

    def _close_called_safe(self) -> bool:
        return bool(getattr(self, "_close_called", False))


# What aio-pika logs per failed reconnect attempt (a WARNING or an ERROR a second during
# an outage) and aiormq per lost connection (a WARNING with a traceback): `OutageReport`
# says once that the connection was lost, and where and after how long it came back.
_NOISE = {
    "aio_pika.robust_connection": ("Connection attempt to", "Reconnect attempt failed"),
    "aiormq.connection": ("Cancelling cause reader exited abnormally",),
}


class _QuietAttempts(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.msg if isinstance(record.msg, str) else ""
        if not text.startswith(self.starts):
            return True
        return logging.getLogger("rabbitworker").isEnabledFor(logging.DEBUG)  # --log-level DEBUG


def quiet_attempt_noise() -> None:
    """Install the filters on aio-pika's and aiormq's connection loggers (idempotent)."""
    for name, starts in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietAttempts) for f in logger.filters):
            logger.addFilter(_QuietAttempts(starts))
