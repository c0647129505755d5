"""The blocking facade: publish, call and submit from code without an event loop
(Django or Flask views, scripts), safe from many threads at once."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import CancelledError, Future
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .errors import ConfigurationError, ConnectionFailed
from .message import R, TaskMessage
from .rpc import PendingReply

if TYPE_CHECKING:
    from .app import App
    from .results import TaskStatus
    from .results.tracking import Tracker
    from .session import Session

__all__ = ["SyncClient", "SyncPendingReply"]

T = TypeVar("T")


class SyncPendingReply(Generic[R]):
    """A submitted RPC request; `result(timeout)` blocks until its reply."""

    def __init__(
        self, client: SyncClient, pending: PendingReply[R], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._client = client
        self._pending = pending
        self._loop = loop
        self.message_id = pending.message_id

    def result(self, timeout: float | None = None) -> R:
        """Wait for the reply; raises like `PendingReply.result`."""
        return self._client._run(lambda _: self._pending.result(timeout=timeout), on=self._loop)


class SyncClient:
    """Runs its own connection on an event loop in a background thread.

    Started on first use and closed at interpreter exit (or by `close()`); every
    method blocks the calling thread only, so many threads can use one client.
    Raises the same errors as the async API.
    """

    def __init__(self, app: App) -> None:
        self._app = app
        self._session: Session | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        # Called with self._lock held: one connection however many threads start it.
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="rabbitworker-sync-client", daemon=True)
        thread.start()
        ready.wait()
        from .session import Session

        try:
            self._session = asyncio.run_coroutine_threadsafe(Session.open(self._app), loop).result()
        except BaseException:
            _stop(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        atexit.register(self.close)
        return loop

    def _schedule(
        self,
        make: Callable[[Session], Coroutine[Any, Any, T]],
        on: asyncio.AbstractEventLoop | None,
    ) -> tuple[Future[T], asyncio.AbstractEventLoop]:
        with self._lock:
            if on is not None and on is not self._loop:
                raise ConnectionFailed("the blocking client was closed since the request was sent")
            loop = self._loop or self._start()
            assert self._session is not None
            # Scheduled under the lock, so close() either sees this call or comes first.
            return asyncio.run_coroutine_threadsafe(make(self._session), loop), loop

    def _run(
        self,
        make: Callable[[Session], Coroutine[Any, Any, T]],
        *,
        on: asyncio.AbstractEventLoop | None = None,
    ) -> T:
        future, _ = self._schedule(make, on)
        return _wait(future)

    def publish(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
        track: bool | timedelta | float = False,
    ) -> str:
        """Blocking `App.publish`; returns the message id once confirmed."""
        return self._run(
            lambda s: s.producer.publish(
                msg, headers=headers, delay=delay, message_id=message_id, track=track
            )
        )

    def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Blocking `App.call`."""
        return self._run(lambda s: s.rpc.call(msg, timeout=timeout, retry=retry))

    def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> SyncPendingReply[R]:
        """Blocking `App.submit`; `.result(timeout)` on what it returns waits for the reply."""
        future, loop = self._schedule(lambda s: s.rpc.submit(msg, retry=retry), None)
        return SyncPendingReply(self, _wait(future), loop)

    def status(self, message_id: str, *, wait: float = 0) -> TaskStatus | None:
        """Blocking `App.status`."""
        if wait > 0:
            return self._run(lambda s: _tracker(s).store.wait(message_id, wait))
        return self._run(lambda s: _tracker(s).store.load(message_id))

    def result(self, message_id: str, *, timeout: float) -> Any:
        """Blocking `App.result`."""
        return self._run(lambda s: _tracker(s).read(message_id, timeout))

    def close(self) -> None:
        """Close the connection and stop the background loop; calls still waiting
        raise `ConnectionFailed`. The client starts again if used afterwards."""
        with self._lock:
            loop, thread, session = self._loop, self._thread, self._session
            self._loop, self._thread, self._session = None, None, None
        if loop is None or thread is None or session is None:
            return
        atexit.unregister(self.close)
        try:
            closing = session.close("the blocking client was closed while waiting for a reply")
            asyncio.run_coroutine_threadsafe(closing, loop).result(timeout=10)
        finally:
            _stop(loop, thread)


def _tracker(session: Session) -> Tracker:
    if session.tracker is None:
        raise ConfigurationError("the app has no results store: App(..., results='redis://...')")
    return session.tracker


def _wait(future: Future[T]) -> T:
    try:
        return future.result()
    except CancelledError:
        raise ConnectionFailed("the blocking client closed while this call waited") from None


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop the loop's thread, then cancel what still runs on it, here, and close it."""
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    if thread.is_alive():  # stuck in a blocking call; the daemon thread dies at exit
        return
    loop.run_until_complete(_cancel_the_rest())
    loop.close()


async def _cancel_the_rest() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
