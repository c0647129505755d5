"""The `ResultStore` protocol every results backend implements, `SaveQueue` which a
store that writes its saves in order may add, and `open_store`, which picks one from
a URL (the drivers are optional extras)."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from ..errors import ConfigurationError
from .status import TaskStatus

__all__ = ["ResultStore", "SaveQueue", "open_store"]


@runtime_checkable
class ResultStore(Protocol):
    """Where workers leave each tracked message's status and readers find it.

    `save` keeps a status for `ttl` seconds unless the store already holds a newer
    one (a higher `TaskStatus.rank`); it wakes the readers waiting in `wait` when the
    state is final. `wait` returns as soon as the status is final, or at the timeout
    with whatever is stored then (None when nothing is), without polling where the
    store can notify. Errors are raised as they come; the caller decides.
    """

    async def save(self, status: TaskStatus, ttl: float) -> None: ...

    async def load(self, message_id: str) -> TaskStatus | None: ...

    async def wait(self, message_id: str, timeout: float) -> TaskStatus | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class SaveQueue(Protocol):
    """A store that writes its saves in the order they are queued.

    `enqueue` queues a status behind every save queued (or `save`d) before it,
    without waiting, and returns a future done once it is written (or with the
    error); the future may be shared, so it must not be cancelled. A worker queues
    its `started` statuses this way instead of waiting before each handler.
    """

    def enqueue(self, status: TaskStatus, ttl: float) -> asyncio.Future[None]: ...


def open_store(spec: str | ResultStore) -> ResultStore:
    """A store for `App(results=...)`: a store object as it is, or a URL:
    `redis://...` / `rediss://...` (extra `rabbitworker[redis]`),
    `postgresql://...` (extra `rabbitworker[postgres]`) or `memory://`.
    Raises `ConfigurationError` for another scheme or a missing driver."""
    if not isinstance(spec, str):
        if not isinstance(spec, ResultStore):
            raise ConfigurationError(
                f"results= takes a URL or a ResultStore, got {type(spec).__name__}"
            )
        return spec
    scheme = spec.split(":", 1)[0].lower()
    try:
        if scheme in ("redis", "rediss", "unix"):
            from .redis import RedisResultStore

            return RedisResultStore(spec)
        if scheme in ("postgresql", "postgres"):
            from .postgres import PostgresResultStore

            return PostgresResultStore(spec)
    except ImportError as exc:
        extra = "redis" if scheme.startswith(("redis", "unix")) else "postgres"
        raise ConfigurationError(
            f"the {scheme} results store needs its driver: pip install 'rabbitworker[{extra}]' "
            f"({exc})"
        ) from None
    if scheme == "memory":
        from .memory import MemoryResultStore

        return MemoryResultStore()
    raise ConfigurationError(
        f"unknown results store {scheme!r}: use redis://, postgresql:// or memory://"
    )
