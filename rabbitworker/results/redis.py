"""The Redis results store (extra `rabbitworker[redis]`, redis-py's asyncio client):
a hash per message id with its rank and status, written by a script that keeps the
newest, and a pub/sub message per final state that wakes the readers waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis

from .status import TaskStatus

__all__ = ["RedisResultStore"]

log = logging.getLogger("rabbitworker.results")

# Keep the status unless the stored one is newer; publish a final state to its channel.
_SAVE = """
local current = redis.call('HGET', KEYS[1], 'rank')
if current and tonumber(current) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'rank', ARGV[2], 'status', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '1' then redis.call('PUBLISH', ARGV[5], '1') end
return 1
"""


class RedisResultStore:
    """Statuses under `<prefix><message id>`; readers wake on `<prefix>done:<id>`."""

    def __init__(self, url: str, *, prefix: str = "rabbitworker:result:") -> None:
        self.prefix = prefix
        self._client: aioredis.Redis = aioredis.from_url(url)
        self._save = self._client.register_script(_SAVE)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._subscribe_lock = asyncio.Lock()

    def _key(self, message_id: str) -> str:
        return f"{self.prefix}{message_id}"

    def _channel(self, message_id: str) -> str:
        return f"{self.prefix}done:{message_id}"

    async def save(self, status: TaskStatus, ttl: float) -> None:
        await self._save(
            keys=[self._key(status.message_id)],
            args=[
                status.model_dump_json(),
                status.rank,
                max(1, int(ttl * 1000)),
                "1" if status.state.final else "0",
                self._channel(status.message_id),
            ],
        )

    async def load(self, message_id: str) -> TaskStatus | None:
        raw = await self._client.hget(self._key(message_id), "status")
        return TaskStatus.model_validate_json(raw) if raw else None

    async def wait(self, message_id: str, timeout: float) -> TaskStatus | None:
        waiter = asyncio.get_running_loop().create_future()
        await self._watch(message_id, waiter)
        try:
            # Subscribed first, then read: a final state written in between is seen.
            status = await self.load(message_id)
            if status is not None and status.state.final:
                return status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
            return await self.load(message_id)
        finally:
            await self._unwatch(message_id, waiter)

    async def _watch(self, message_id: str, waiter: asyncio.Future[None]) -> None:
        async with self._subscribe_lock:
            if self._pubsub is None:
                self._pubsub = self._client.pubsub()
            waiters = self._waiters.setdefault(message_id, set())
            if not waiters:
                await self._pubsub.subscribe(self._channel(message_id))
            waiters.add(waiter)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.ensure_future(self._read())

    async def _unwatch(self, message_id: str, waiter: asyncio.Future[None]) -> None:
        async with self._subscribe_lock:
            waiters = self._waiters.get(message_id)
            if waiters is None:
                return
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[message_id]
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(self._channel(message_id))

    async def _read(self) -> None:
        """Wake the waiters of each id whose final state was published."""
        while self._waiters:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except Exception as exc:  # the connection dropped: readers fall back to their timeout
                log.warning("results store: lost the notification connection (%s)", exc)
                return
            if message is None:
                continue
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            for waiter in self._waiters.get(name.removeprefix(f"{self.prefix}done:"), set()):
                if not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._client.aclose()
