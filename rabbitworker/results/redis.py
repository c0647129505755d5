"""The Redis results store (extra `rabbitworker[redis]`, redis-py's asyncio client):
a hash per message id with its rank and status, written by a script that keeps the
newest, and a pub/sub message per final state that wakes the readers waiting for it.

Saves made in the same turn of the event loop (a busy worker settles many messages
per turn) go out together, as one script call: one round trip instead of one each.
Within a batch, a state that a later one of the same message replaces (a `started`
followed by its `succeeded`) is left out: the script is atomic, so no reader could
have seen it, and it is neither encoded nor sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .status import TaskStatus

__all__ = ["RedisResultStore"]

log = logging.getLogger("rabbitworker.results")

# For each key (and its 5 arguments: status, rank, ttl ms, final, channel): keep the
# status unless the stored one is newer; publish a final state to its channel. One
# call saves a whole batch, in order.
_SAVE = """
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  local current = redis.call('HGET', key, 'rank')
  if not current or tonumber(current) <= tonumber(ARGV[a + 2]) then
    redis.call('HSET', key, 'rank', ARGV[a + 2], 'status', ARGV[a + 1])
    redis.call('PEXPIRE', key, ARGV[a + 3])
    if ARGV[a + 4] == '1' then redis.call('PUBLISH', ARGV[a + 5], '1') end
  end
end
return #KEYS
"""


class RedisResultStore:
    """Statuses under `<prefix><message id>`; readers wake on `<prefix>done:<id>`."""

    def __init__(self, url: str, *, prefix: str = "rabbitworker:result:") -> None:
        self.prefix = prefix
        # A pooled connection that died during an outage fails its next command:
        # that command is tried again on a new connection instead.
        self._client: aioredis.Redis = aioredis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._save = self._client.register_script(_SAVE)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._subscribe_lock = asyncio.Lock()
        self._batch: list[tuple[TaskStatus, float]] = []
        self._in_batch: dict[str, int] = {}  # message id -> its newest entry in the batch
        self._written: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    def _key(self, message_id: str) -> str:
        return f"{self.prefix}{message_id}"

    def _channel(self, message_id: str) -> str:
        return f"{self.prefix}done:{message_id}"

    async def save(self, status: TaskStatus, ttl: float) -> None:
        await asyncio.shield(self.enqueue(status, ttl))

    def enqueue(self, status: TaskStatus, ttl: float) -> asyncio.Future[None]:
        """Queue `status` behind every save queued before it, without waiting: the
        future is done when it is written (or failed). Do not cancel it: it is shared."""
        self._add(status, ttl)
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
        if self._writer is None:
            # Its first step runs on the next turn of the loop: by then every save
            # of this turn has joined the batch.
            self._writer = asyncio.ensure_future(self._write())
        return self._written

    def _add(self, status: TaskStatus, ttl: float) -> None:
        """Add to the batch what the script would not drop at once: a non-final state
        that the next one of its message replaces is left out (it would be written and
        overwritten in the same atomic call, unseen and without a notification)."""
        index = self._in_batch.get(status.message_id)
        if index is not None:
            queued = self._batch[index][0]
            if not queued.state.final and status.rank >= queued.rank:
                self._batch[index] = (status, ttl)
                return
            if not status.state.final and status.rank < queued.rank:
                return  # older news than what is already queued: the script would drop it
        self._in_batch[status.message_id] = len(self._batch)
        self._batch.append((status, ttl))

    def _script_args(self, batch: list[tuple[TaskStatus, float]]) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = []
        for status, ttl in batch:
            keys.append(self._key(status.message_id))
            final = status.state.final
            args += (
                status.model_dump_json(),
                status.rank,
                max(1, int(ttl * 1000)),
                "1" if final else "0",
                self._channel(status.message_id) if final else "",
            )
        return keys, args

    async def _write(self) -> None:
        """Write batches until none is waiting; one at a time, in order."""
        try:
            while self._written is not None:
                batch, self._batch = self._batch, []
                self._in_batch = {}
                written, self._written = self._written, None
                try:
                    keys, args = self._script_args(batch)
                    await self._save(keys=keys, args=args)
                except Exception as exc:
                    written.set_exception(exc)
                    written.exception()  # each saver raises it; the future itself is handled
                else:
                    written.set_result(None)
        finally:
            self._writer = None

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
