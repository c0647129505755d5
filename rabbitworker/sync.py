"""The blocking facade: publish, call and submit from code without an event loop
(Django or Flask views, scripts), safe from many threads at once."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .bulk import DEFAULT_WINDOW, PublishResult
from .errors import ConfigurationError, ConnectionFailed, RPCTimeout
from .message import R, TaskMessage
from .rpc import PendingReply

if TYPE_CHECKING:
    from .app import App
    from .results import TaskStatus
    from .results.tracking import Tracker
    from .session import Session

__all__ = ["SyncClient", "SyncPendingReply"]

T = TypeVar("T")

# `publish_many` hands the background loop this many windows of messages at a time.
_WINDOWS_PER_CHUNK = 8


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
        self._connecting_took = 0.0  # by the call that connected, read under the lock

    def _start(self, within: float | None) -> asyncio.AbstractEventLoop:
        # Called with self._lock held: one connection however many threads start it.
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # Here, on the loop's own thread: close() may be called from a thread that
            # runs an event loop of its own (an async app closing its blocking client).
            loop.run_until_complete(_cancel_the_rest())
            loop.close()

        thread = threading.Thread(target=run, name="rabbitworker-sync-client", daemon=True)
        thread.start()
        ready.wait()
        from .session import Session

        opening = asyncio.run_coroutine_threadsafe(Session.open(self._app), loop)
        try:
            self._session = opening.result(timeout=within)
        except TimeoutError:
            # The caller's own timeout (a first call()), shorter than connect_timeout.
            opening.cancel()
            _stop(loop, thread)
            raise RPCTimeout(f"not connected to the broker within {within:g} s") from None
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
        *,
        connect_within: float | None = None,
    ) -> tuple[Future[T], asyncio.AbstractEventLoop]:
        with self._lock:
            if on is not None and on is not self._loop:
                raise ConnectionFailed("the blocking client was closed since the request was sent")
            loop = self._loop
            if loop is None:
                started = time.monotonic()
                loop = self._start(connect_within)
                self._connecting_took = time.monotonic() - started
            else:
                self._connecting_took = 0.0
            assert self._session is not None
            # Scheduled under the lock, so close() either sees this call or comes first.
            return asyncio.run_coroutine_threadsafe(make(self._session), loop), loop

    def _run(
        self,
        make: Callable[[Session], Coroutine[Any, Any, T]],
        *,
        on: asyncio.AbstractEventLoop | None = None,
        connect_within: float | None = None,
    ) -> T:
        future, _ = self._schedule(make, on, connect_within=connect_within)
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

    def publish_many(
        self,
        messages: Iterable[TaskMessage[Any]],
        *,
        window: int = DEFAULT_WINDOW,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        track: bool | timedelta | float = False,
    ) -> Iterator[PublishResult]:
        """Blocking `App.publish_many`: yields each message's `PublishResult` in input
        order. `messages` is read in this thread, a few windows at a time."""
        chunk_size = window * _WINDOWS_PER_CHUNK
        source = iter(messages)
        offset = 0
        while chunk := list(itertools.islice(source, chunk_size)):

            async def run(s: Session, chunk: list[TaskMessage[Any]] = chunk) -> list[PublishResult]:
                results = s.producer.publish_many(
                    chunk, window=window, headers=headers, delay=delay, track=track
                )
                return [r async for r in results]

            for result in self._run(run):
                yield dataclasses.replace(result, index=result.index + offset)
            offset += len(chunk)

    def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Blocking `App.call`; `timeout` bounds connecting too, on the first use."""

        def call(s: Session) -> Coroutine[Any, Any, R]:
            left = max(timeout - self._connecting_took, 0.001)
            return s.rpc.call(msg, timeout=left, retry=retry)

        return self._run(call, connect_within=timeout)

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
    """Stop the loop; its thread then cancels what still runs on it and closes it."""
    loop.call_soon_threadsafe(loop.stop)
    # A thread stuck in a blocking call is left behind: it is a daemon, gone at exit.
    thread.join(timeout=10)


async def _cancel_the_rest() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()
