"""An in-memory results store: for tests and single-process use (statuses live in
this process only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .status import TaskStatus

__all__ = ["MemoryResultStore"]


class MemoryResultStore:
    """Keeps statuses in a dict, each until its ttl; `clock` is injectable."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[TaskStatus, float]] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def save(self, status: TaskStatus, ttl: float) -> None:
        current = await self.load(status.message_id)
        if current is not None and current.rank > status.rank:
            return
        self._entries[status.message_id] = (status, self._clock() + ttl)
        if status.state.final:
            for waiter in self._waiters.pop(status.message_id, set()):
                if not waiter.done():
                    waiter.set_result(None)

    async def load(self, message_id: str) -> TaskStatus | None:
        entry = self._entries.get(message_id)
        if entry is None:
            return None
        status, expires = entry
        if expires <= self._clock():
            del self._entries[message_id]
            return None
        return status

    async def wait(self, message_id: str, timeout: float) -> TaskStatus | None:
        status = await self.load(message_id)
        if status is not None and status.state.final:
            return status
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(message_id, set()).add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.get(message_id, set()).discard(waiter)
        return await self.load(message_id)

    async def close(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
