"""De-duplication: a `Deduplicate` middleware that makes a handler run at most once
per message id, with a pluggable store and a bounded in-memory default.

Delivery is at least once, so a handler may see a message again (a redelivery after
a lost ack, a publisher that resent after a lost confirm). The middleware remembers
the ids whose handler succeeded and acknowledges a later delivery of the same id
without calling the handler. A failed attempt is not remembered, so its retry runs.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .base import Middleware, Outcome

if TYPE_CHECKING:
    from ..context import Context

__all__ = ["DEFAULT_TTL", "DedupStore", "Deduplicate", "MemoryDedupStore"]

log = logging.getLogger("rabbitworker.dedup")

DEFAULT_TTL = 24 * 3600.0
_KEY = "dedup.key"


@runtime_checkable
class DedupStore(Protocol):
    """Where handled ids are kept. Share one (Redis, a database table) between
    processes to de-duplicate across workers; see docs/operations.md."""

    async def seen(self, key: str) -> bool:
        """True when `key` was remembered and has not expired."""
        ...

    async def remember(self, key: str, ttl: float) -> None:
        """Keep `key` for `ttl` seconds."""
        ...


class MemoryDedupStore:
    """A per-process store: at most `max_entries` ids, each kept for its ttl.

    When full, the oldest ids are forgotten first, so the bound trades memory for
    how far back a duplicate is caught.
    """

    def __init__(
        self, max_entries: int = 100_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._expires: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expires)

    async def seen(self, key: str) -> bool:
        expires = self._expires.get(key)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expires[key]
            return False
        return True

    async def remember(self, key: str, ttl: float) -> None:
        now = self._clock()
        self._expires[key] = now + ttl
        self._expires.move_to_end(key)
        # Oldest first: expired entries, then whatever is over the bound.
        while self._expires:
            oldest, expires = next(iter(self._expires.items()))
            if expires > now and len(self._expires) <= self.max_entries:
                break
            del self._expires[oldest]


class Deduplicate(Middleware):
    """Run a handler at most once per message id (per queue) for a given store.

    ``App("shop", middleware=[Deduplicate()])`` uses a `MemoryDedupStore`, which
    only catches duplicates that reach the same process; pass a shared `store` to
    catch them across workers. An id is remembered for `ttl` seconds once its
    handler succeeded, so a failed attempt can still be retried. RPC requests
    (with a reply_to) are not de-duplicated: their caller waits for a reply.
    Two deliveries of one id running at the very same time may both run.
    """

    def __init__(self, store: DedupStore | None = None, *, ttl: float = DEFAULT_TTL) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.store: DedupStore = store if store is not None else MemoryDedupStore()
        self.ttl = ttl
        self.skipped = 0

    @staticmethod
    def key(ctx: Context) -> str:
        # The queue is part of the key: a message routed to two queues is two jobs.
        return f"{ctx.queue}\x00{ctx.message_id}"

    async def before_process(self, ctx: Context) -> None:
        if not ctx.message_id or ctx.reply_to:
            return
        key = self.key(ctx)
        if await self.store.seen(key):
            self.skipped += 1
            log.info(
                "message %s on %s was handled before; acknowledged without running it",
                ctx.message_id,
                ctx.queue,
            )
            ctx.outcome = Outcome.ack()
            return
        ctx.state[_KEY] = key

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        key = ctx.state.pop(_KEY, None)
        if key is None or error is not None:
            return
        if ctx.outcome is not None and ctx.outcome.kind == "ack":
            await self.store.remember(key, self.ttl)
