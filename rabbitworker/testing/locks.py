"""Locks on the in-memory broker, as RabbitMQ's exclusive queues give them to the
beat: one connection holds a name at a time, and loses it when it closes."""

from __future__ import annotations

import asyncio

from ..transport import LockState

__all__ = ["MemoryLock", "MemoryLocks"]


class MemoryLock:
    """A lock held by one `MemoryTransport` (a `Lock`)."""

    def __init__(self, locks: MemoryLocks, name: str, owner: int) -> None:
        self.locks = locks
        self.name = name
        self.owner = owner
        self._lost = asyncio.Event()

    @property
    def held(self) -> bool:
        return not self._lost.is_set()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def release(self, timeout: float) -> None:
        self.locks.drop(self)

    def lose(self) -> None:
        self._lost.set()


class MemoryLocks:
    """The locks of one broker, by name."""

    def __init__(self) -> None:
        self._held: dict[str, MemoryLock] = {}

    def take(self, name: str, owner: int) -> MemoryLock | None:
        """The lock `name` for connection `owner`, or None when another one holds it
        (taken again by its holder, as an exclusive queue declared again: the same)."""
        held = self._held.get(name)
        if held is not None:
            return held if held.owner == owner else None
        lock = self._held[name] = MemoryLock(self, name, owner)
        return lock

    def probe(self, name: str) -> LockState:
        return "held" if name in self._held else "free"

    def drop(self, lock: MemoryLock) -> None:
        if self._held.get(lock.name) is lock:
            del self._held[lock.name]
        lock.lose()

    def drop_all(self, owner: int) -> None:
        """Connection `owner` closed: the broker lets go of what it held."""
        for lock in [lock for lock in self._held.values() if lock.owner == owner]:
            self.drop(lock)
