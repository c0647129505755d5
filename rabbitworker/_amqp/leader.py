"""A lock held on the broker: an exclusive queue that only one connection can hold.
The broker deletes it the moment the holder's connection closes (or misses its
heartbeats), and then another process can declare it: that is the beat's leadership.

`probe_lock` looks without taking: a passive declare from another connection, which
RabbitMQ (3.10 checked) answers with RESOURCE_LOCKED (405) while a connection holds
the exclusive queue and NOT_FOUND (404) once none does; it closes the asking channel
either way, so the probe runs on a channel of its own."""

from __future__ import annotations

import asyncio
import contextlib

import aiormq

from ..transport import LockState
from .errors import Op, reraise

__all__ = ["BrokerLock", "probe_lock", "try_lock"]


class BrokerLock:
    """A held lock (a `Lock`): lost when its channel (or connection) closes."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, name: str) -> None:
        self.channel = channel
        self.name = name

    @property
    def held(self) -> bool:
        return not self.channel.is_closed

    async def wait_lost(self) -> None:
        with contextlib.suppress(BaseException):
            await asyncio.shield(self.channel.closing)

    async def release(self, timeout: float) -> None:
        if self.channel.is_closed:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await self.channel.queue_delete(self.name)
                await self.channel.close()


async def try_lock(
    channel: aiormq.abc.AbstractChannel, name: str, timeout: float
) -> BrokerLock | None:
    """Take the lock `name` on a fresh `channel`; None when another connection holds it
    (the broker then closes that channel)."""
    try:
        async with asyncio.timeout(timeout):
            await channel.queue_declare(name, exclusive=True, arguments={"x-queue-type": "classic"})
    except aiormq.exceptions.ChannelLockedResource:
        return None
    except Exception as exc:
        with contextlib.suppress(Exception):
            await channel.close()
        reraise(exc, Op.SETUP, f"take the lock {name}")
    return BrokerLock(channel, name)


async def probe_lock(channel: aiormq.abc.AbstractChannel, name: str, timeout: float) -> LockState:
    """Whether a connection holds the lock `name`, asked on a fresh `channel` (which
    this closes) without taking it: "held" also for a queue of that name that is
    not exclusive (no other process could take the lock either)."""
    try:
        async with asyncio.timeout(timeout):
            await channel.queue_declare(name, passive=True)
    except aiormq.exceptions.ChannelLockedResource:
        return "held"
    except aiormq.exceptions.ChannelNotFoundEntity:
        return "free"
    except Exception as exc:
        reraise(exc, Op.READ, f"look at the lock {name}")
    finally:
        if not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
    return "held"
