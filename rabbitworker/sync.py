"""The blocking facade: publish, call and submit from code without an event loop
(Django or Flask views, scripts), safe from many threads at once."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .message import R, TaskMessage
from .rpc import PendingReply

if TYPE_CHECKING:
    from .app import App

__all__ = ["SyncClient", "SyncPendingReply"]

T = TypeVar("T")


class SyncPendingReply(Generic[R]):
    """A submitted RPC request; `result(timeout)` blocks until its reply."""

    def __init__(self, client: SyncClient, pending: PendingReply[R]) -> None:
        self._client = client
        self._pending = pending
        self.message_id = pending.message_id

    def result(self, timeout: float | None = None) -> R:
        return self._client._run(self._pending.result(timeout=timeout))


class SyncClient:
    """Runs its own connection on an event loop in a background thread.

    Started on first use and closed at interpreter exit (or by `close()`); every
    method blocks the calling thread only, so many threads can use one client.
    Raises the same errors as the async API.
    """

    def __init__(self, app: App) -> None:
        self._app = app.clone()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="rabbitworker-sync", daemon=True)
            thread.start()
            ready.wait()
            try:
                asyncio.run_coroutine_threadsafe(self._app.connect(), loop).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                raise
            self._loop, self._thread = loop, thread
            atexit.register(self.close)
            return loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop or self._start()
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()

    def publish(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
    ) -> str:
        """Blocking `App.publish`; returns the message id once confirmed."""
        return self._run(
            self._app.publish(msg, headers=headers, delay=delay, message_id=message_id)
        )

    def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Blocking `App.call`."""
        return self._run(self._app.call(msg, timeout=timeout, retry=retry))

    def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> SyncPendingReply[R]:
        """Blocking `App.submit`; `.result(timeout)` on what it returns waits for the reply."""
        return SyncPendingReply(self, self._run(self._app.submit(msg, retry=retry)))

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop, self._thread = None, None
        if loop is None or thread is None:
            return
        atexit.unregister(self.close)
        try:
            asyncio.run_coroutine_threadsafe(self._app.close(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
