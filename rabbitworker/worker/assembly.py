"""What a worker is made of: the parts a delivery goes through (processing,
settlement, crash isolation, dispatch), the middleware the app's features add, and
the threads of sync handlers, built once on the app's open session. Each part is
given what it needs when it is built; none is wired to another afterwards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..middleware import Middleware
from ..pacing import Pacing
from ..registry import Task
from ..results.middleware import ResultTracking
from .dispatch import Dispatcher
from .processing import Processor
from .settlement import Settlement
from .suspects import ReturnLedger, Suspects
from .threads import SyncThreads

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Parts", "assemble"]


@dataclass(frozen=True, slots=True)
class Parts:
    """A worker's parts: its dispatcher (and through it the rest), the middleware it
    runs, and the threads of its sync handlers (None when all are async)."""

    dispatcher: Dispatcher
    middleware: list[Middleware]
    threads: SyncThreads | None


def assemble(
    app: App,
    tasks: list[Task],
    *,
    concurrency: int,
    prefetch: int,
    on_threads_exhausted: Callable[[], None],
    on_suspects_moved: Callable[[str], None],
) -> Parts:
    """The parts for running `tasks` on `app`'s open session."""
    s, session = app.settings, app.session
    threads = _threads(app, tasks, concurrency, on_threads_exhausted)
    middleware = _middleware(app, tasks, prefetch)
    # Redeliveries the worker can account for: deliveries it requeued, or lost with
    # a channel, are no crash.
    ledger = ReturnLedger()
    settlement = Settlement(
        session.transport,
        app.exchange,
        queue_type=s.queue_type,
        max_message_size=s.max_message_size,
        middleware=middleware,
        returned=ledger.returned,
    )
    processor = Processor(
        app.registry,
        middleware,
        publish=session.producer.publish,
        max_message_size=s.max_message_size,
        threads=threads,
    )
    suspects = Suspects(
        session.transport,
        dead_letter=settlement.dead_letter,
        delivery_limit=s.delivery_limit,
        on_moved=on_suspects_moved,
    )
    dispatcher = Dispatcher(
        session.transport,
        processor,
        settlement,
        suspects,
        ledger,
        concurrency=concurrency,
        prefetch=prefetch,
        pacing=next((m for m in middleware if isinstance(m, Pacing)), None),
    )
    return Parts(dispatcher, middleware, threads)


def _threads(
    app: App, tasks: list[Task], concurrency: int, on_exhausted: Callable[[], None]
) -> SyncThreads | None:
    """Threads for the plain `def` handlers among `tasks` (None when all are async)."""
    if all(t.is_async for t in tasks):
        return None
    limit = app.settings.max_abandoned_threads
    return SyncThreads(concurrency, max_abandoned=limit, on_exhausted=on_exhausted)


def _middleware(app: App, tasks: list[Task], prefetch: int) -> list[Middleware]:
    """The app's middleware, then what the worker adds for the app's features
    (results tracking when it has a results store, pacing for paced tasks)."""
    tracker = app.session.tracker
    extra: list[Middleware] = [ResultTracking(tracker)] if tracker is not None else []
    s = app.settings
    pacing = Pacing.for_tasks(
        tasks, namespace=app.exchange, results_url=s.results, prefetch=prefetch
    )
    return [*app.middleware, *extra, *([pacing] if pacing else [])]
