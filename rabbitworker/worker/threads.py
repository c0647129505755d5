"""The threads plain `def` handlers run in: `concurrency` of them for work, plus room
for threads abandoned by a timeout, so a hung handler never takes a slot from the
next message. Abandoned threads are counted and bounded."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import HandlerTimeout

__all__ = ["SyncThreads"]

log = logging.getLogger("rabbitworker.worker")


class SyncThreads:
    """Runs sync handlers in threads; a thread cannot be stopped, so one that passes
    its handler's timeout (or whose wait is cancelled) is abandoned: it keeps
    running, its result is dropped, and it no longer counts against `concurrency`.
    `abandoned` counts those still running, `abandoned_total` the timeouts so far.

    When `max_abandoned` threads are abandoned at once, `on_exhausted` is called
    (the worker then stops, so that its process can be restarted).
    """

    def __init__(
        self,
        concurrency: int,
        *,
        max_abandoned: int,
        on_exhausted: Callable[[], None],
    ) -> None:
        # Room for every slot plus every abandoned thread: a new message always
        # finds a thread, however many hung ones there are.
        self._pool = ThreadPoolExecutor(
            max_workers=concurrency + max_abandoned, thread_name_prefix="rabbitworker-sync"
        )
        self.max_abandoned = max_abandoned
        self._on_exhausted = on_exhausted
        self._lock = threading.Lock()
        self.busy = 0  # threads running a handler, abandoned ones included
        self.abandoned = 0  # of those, the ones whose result is dropped
        self.abandoned_total = 0

    async def run(
        self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None, what: str
    ) -> Any:
        """Run `fn(*args)` in a thread; raises `HandlerTimeout` after `timeout` s.

        `what` names the handler and message for the log."""
        with self._lock:
            self.busy += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._finished)
        waiter = asyncio.shield(asyncio.wrap_future(future))
        try:
            if timeout is None:
                return await waiter
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            if future.done():
                return future.result()  # finished just now, or its own TimeoutError
            self._abandon(future, f"{what} passed its timeout of {timeout:g} s")
            raise HandlerTimeout(f"ran past its timeout of {timeout:g} s") from None
        except asyncio.CancelledError:
            # Interrupted by the drain or a lost channel: a handler not started yet
            # never starts, and a running one's thread is abandoned (not reported: its
            # message goes back to the broker, and this is no sign of a stuck handler).
            if not future.cancel() and not future.done():
                self._abandon(future, None)
            raise

    def _abandon(self, future: Future[Any], what: str | None) -> None:
        with self._lock:
            self.abandoned += 1
            if what is not None:
                self.abandoned_total += 1
            count = self.abandoned
        future.add_done_callback(self._released)
        if what is None:
            return
        log.warning(
            "%s; its thread is abandoned and keeps running (%d abandoned now, at most %d)",
            what,
            count,
            self.max_abandoned,
        )
        if count >= self.max_abandoned:
            self._on_exhausted()

    def _released(self, _: Future[Any]) -> None:
        with self._lock:
            self.abandoned -= 1

    def _finished(self, _: Future[Any]) -> None:
        with self._lock:
            self.busy -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
