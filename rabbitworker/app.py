"""The `App`: an application's tasks and settings, its connection to the broker,
the producer API (`publish`, `call`, `submit`) and the current app that the
module-level functions act on."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from .bulk import BulkOptions, Messages, PublishResult
from .errors import ConfigurationError
from .message import R, TaskMessage
from .middleware import Middleware, Retries
from .pacing import RateLimit
from .policy import RetryPolicy
from .registry import Registry, caller_namespace
from .results import ResultStore, TaskStatus, open_store
from .results.tracking import Tracker, ttl_seconds
from .rpc import PendingReply
from .schedules.schedule import CatchUp, Schedule, Schedules
from .session import Session
from .settings import Settings, first_error
from .topology import QueueType, Topology
from .transport import Transport

if TYPE_CHECKING:
    from .sync import SyncClient

__all__ = ["App", "call", "current_app", "publish", "submit"]

log = logging.getLogger("rabbitworker")

F = TypeVar("F", bound=Callable[..., Any])
TransportFactory = Callable[["App", Settings], Transport]


class App:
    """An application's tasks and its connection to the broker.

    ``App("shop")`` reads the broker URL from ``RABBITWORKER_URL`` when it starts;
    keyword options override any setting (see `Settings`). ``async with app:``
    connects, declares the topology and makes the module-level `publish`, `call`
    and `submit` act on this app.
    """

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        exchange: str = "rabbitworker",
        queue_type: QueueType | None = None,
        delivery_limit: int | None = None,
        retry: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        results: str | ResultStore | None = None,
        **settings: Any,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self._results_store = None if isinstance(results, str) else results
        overrides = {
            "url": url,
            "queue_type": queue_type,
            "delivery_limit": delivery_limit,
            "results": results if isinstance(results, str) else None,
        }
        self._overrides: dict[str, Any] = {
            **{k: v for k, v in overrides.items() if v is not None},
            **settings,
        }
        self.registry = Registry(default_retry=retry)
        self.schedules = Schedules()
        self.middleware: list[Middleware] = [Retries(), *middleware]
        self._settings: Settings | None = None
        self._session: Session | None = None
        self._sync: SyncClient | None = None
        self._entered = 0
        self._opened_by_context = False
        self.transport_factory: TransportFactory | None = None  # rabbitworker.testing

    # -- registration -------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """Settings read now from the environment and this app's overrides."""
        if self._settings is None:
            try:
                self._settings = Settings(**self._overrides)
            except ValueError as exc:
                raise ConfigurationError(f"invalid settings: {first_error(exc)}") from None
        return self._settings

    def configure(self, **settings: Any) -> None:
        """Override settings (before the app starts), e.g. from CLI options; None
        values are ignored."""
        self._overrides.update({k: v for k, v in settings.items() if v is not None})
        self._settings = None

    def register(self, message_type: type[TaskMessage[Any]]) -> None:
        """Make a message type known without a handler (for a producer's CLI use);
        raises `ConfigurationError` when another type has its routing key."""
        self.registry.register(message_type)

    def task(
        self,
        *,
        queue: str,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        bind: Iterable[str] = (),
        results: bool | timedelta | float = False,
        rate_limit: str | RateLimit | None = None,
        concurrency: int | None = None,
    ) -> Callable[[F], F]:
        """Register a handler for the message type of its first parameter.

        ``async def`` handlers run on the event loop, plain ``def`` ones in a thread
        pool. An optional second parameter receives the `Context`. `retry` defaults
        to the app's policy (3 attempts, 1 s then 10 s apart); `timeout` fails an
        attempt that runs longer; `bind` adds binding patterns (like
        ``"reports.*"``) to the queue; `results` keeps each message's status and
        result in the app's results store (True: for `results_ttl`, or for a
        timedelta); `rate_limit` paces its starts (``"20/s"``, or a `RateLimit`),
        `concurrency` bounds its runs at once in a process. Raises
        `ConfigurationError` for a duplicate handler or routing key, or a bad option.
        """
        # 0.0 stands for "the app's results_ttl", read when the app starts.
        results_ttl = ttl_seconds(results, 0.0) if results is not True else 0.0

        def decorate(func: F) -> F:
            self.registry.add_task(
                func,
                queue=queue,
                retry=retry,
                timeout=timeout,
                bind=bind,
                results_ttl=results_ttl,
                localns=caller_namespace(1),
                rate_limit=RateLimit.of(rate_limit),
                concurrency=concurrency,
            )
            return func

        return decorate

    def schedule(
        self,
        message: TaskMessage[Any],
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        name: str | None = None,
        tz: str | None = None,
        catch_up: CatchUp = "latest",
    ) -> Schedule:
        """Publish `message` by `cron` (read in time zone `tz`, default UTC) or `every`
        interval, from `rabbitworker beat`; `catch_up`: "latest", "all" or "none" of
        the ticks missed while no beat ran. Raises `ConfigurationError`."""
        self.register(type(message))
        return self.schedules.add(
            Schedule.build(message, cron=cron, every=every, name=name, tz=tz, catch_up=catch_up)
        )

    @property
    def queues(self) -> list[str]:
        return self.registry.queues

    def topology(self) -> Topology:
        """The broker layout this app declares."""
        s = self.settings
        return self.registry.topology(
            self.exchange, queue_type=s.queue_type, delivery_limit=s.delivery_limit
        )

    def make_transport(self) -> Transport:
        """A new, unopened transport to this app's broker."""
        if self.transport_factory is not None:
            return self.transport_factory(self, self.settings)
        from ._amqp.transport import AmqpTransport

        s = self.settings
        return AmqpTransport(
            s.url,
            connect_timeout=s.connect_timeout,
            publish_timeout=s.publish_timeout,
            heartbeat=s.heartbeat,
            name=f"rabbitworker:{self.name}",
        )

    def make_tracker(self) -> Tracker | None:
        """A tracker over a newly opened results store; None when the app has none."""
        # Not `or`: a store may be empty, and falsy (MemoryResultStore has a length).
        spec = self._results_store if self._results_store is not None else self.settings.results
        if spec is None:
            return None
        s = self.settings
        return Tracker(
            open_store(spec),
            self.registry,
            default_ttl=s.results_ttl,
            max_result_size=s.max_result_size,
        )

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        """Connect, declare the topology, open the confirmed publishing channel."""
        if self._session is None:
            self._session = await Session.open(self)

    async def close(self) -> None:
        """Close the connection; the app can connect again later."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        session, self._session = self._session, None
        _forget(self)
        if session is not None:
            await session.close("the app was closed while waiting for a reply")

    async def __aenter__(self) -> App:
        if self._entered == 0:
            # Closed again on the way out only if this opened it: a connection a
            # worker in the same process opened stays the worker's.
            self._opened_by_context = self._session is None
            await self.connect()
        self._entered += 1
        _remember(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered -= 1
        if self._entered == 0 and self._opened_by_context:
            await self.close()

    @property
    def session(self) -> Session:
        """The open connection; raises `ConfigurationError` when there is none."""
        if self._session is None:
            raise ConfigurationError(
                f"app {self.name!r} is not connected: use `async with app:` or "
                "`await app.connect()`"
            )
        return self._session

    @property
    def transport(self) -> Transport:
        return self.session.transport

    # -- producing ----------------------------------------------------------

    async def publish(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
        track: bool | timedelta | float = False,
    ) -> str:
        """Publish `msg`; returns its message id once the broker confirmed it.

        With `delay` (seconds or a timedelta) it is delivered no earlier than that.
        `track` keeps its status and result in the results store (as a task's
        `results=` does): read them with `status()` and `result()`.
        Raises `UnroutableError` when no queue is bound for its routing key,
        `NotConfirmed` on a nack or timeout, `MessageTooLarge`, `HeaderError`,
        `ConnectionFailed`, `ConfigurationError` for `track` without a results store.
        """
        return await self.session.producer.publish(
            msg, headers=headers, delay=delay, message_id=message_id, track=track
        )

    def publish_many(
        self, messages: Messages, **options: Unpack[BulkOptions]
    ) -> AsyncIterator[PublishResult]:
        """Many messages with a window of confirms in flight; yields each one's
        `PublishResult` (id or error) in input order. See `rabbitworker.bulk`."""
        return self.session.producer.publish_many(messages, **options)

    def _tracker(self) -> Tracker:
        tracker = self.session.tracker
        if tracker is None:
            raise ConfigurationError(
                f"app {self.name!r} has no results store: App(..., results='redis://...')"
            )
        return tracker

    async def status(self, message_id: str, *, wait: float = 0) -> TaskStatus | None:
        """The status of a tracked message, from any process; None when it is
        unknown or expired. With `wait`, up to that many seconds for a final state.
        Raises `ConfigurationError` without a results store."""
        store = self._tracker().store
        return await (store.wait(message_id, wait) if wait > 0 else store.load(message_id))

    async def result(self, message_id: str, *, timeout: float) -> Any:
        """Wait up to `timeout` seconds for a tracked message's result, validated as
        its message type's reply type. Raises `RemoteError` when it failed (was
        dead-lettered), `RPCTimeout` when it has no final status in time."""
        return await self._tracker().read(message_id, timeout)

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        """Publish an RPC request; await `.result(timeout=...)` on what it returns.

        Returns once the broker confirmed the request (within `publish_timeout`).
        """
        return await self.session.rpc.submit(msg, retry=retry)

    async def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Publish an RPC request and wait for its reply, validated as the reply type.

        `timeout` bounds the whole call. Raises `UnroutableError` at once for an
        unbound routing key, `RPCTimeout`, `RemoteError` when the handler raised,
        `ConnectionFailed`. By default a failed request is not retried; `retry=True`
        applies the task's policy.
        """
        return await self.session.rpc.call(msg, timeout=timeout, retry=retry)

    @property
    def sync(self) -> SyncClient:
        """A blocking client for code without an event loop (Django, Flask, scripts)."""
        if self._sync is None:
            from .sync import SyncClient

            self._sync = SyncClient(self)
        return self._sync

    def __repr__(self) -> str:
        return f"App({self.name!r}, exchange={self.exchange!r}, queues={self.queues})"


# The app the module-level functions use: the one entered in this context (task) if
# any, else the app connected last (a web framework's lifespan enters it in another task).
_current: ContextVar[App | None] = ContextVar("rabbitworker_current_app", default=None)
_connected: list[App] = []


def _remember(app: App) -> None:
    _current.set(app)
    if app in _connected:
        _connected.remove(app)
    _connected.append(app)


def _forget(app: App) -> None:
    if _current.get() is app:
        _current.set(None)
    if app in _connected:
        _connected.remove(app)


def current_app() -> App:
    """The app the module-level functions act on; raises `ConfigurationError` when
    no app is connected."""
    app = _current.get()
    if app is not None and app._session is not None:
        return app
    if _connected:
        return _connected[-1]
    raise ConfigurationError(
        "no rabbitworker app is connected: wrap the code in `async with app:` "
        "or use app.publish()/app.call()"
    )


async def publish(
    msg: TaskMessage[Any],
    *,
    headers: Mapping[str, Any] | None = None,
    delay: float | timedelta | None = None,
    message_id: str | None = None,
    track: bool | timedelta | float = False,
) -> str:
    """`App.publish` on the current app."""
    return await current_app().publish(
        msg, headers=headers, delay=delay, message_id=message_id, track=track
    )


async def call(msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
    """`App.call` on the current app."""
    return await current_app().call(msg, timeout=timeout, retry=retry)


async def submit(msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
    """`App.submit` on the current app."""
    return await current_app().submit(msg, retry=retry)
