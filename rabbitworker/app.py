"""The `App`: the registry of message types and task handlers, the connection a
producer or worker shares, and the module-level `publish`, `call` and `submit`."""

from __future__ import annotations

import inspect
import logging
import sys
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from .connection import connect, retry_across_reconnects
from .errors import ConfigurationError
from .message import R, TaskMessage
from .middleware import Middleware
from .publisher import Publisher
from .retry import Retries, RetryPolicy
from .rpc import PendingReply, RPCClient
from .settings import Settings, mask_url
from .topology import QueueType, Topology, build_topology, declare, topic_matches

if TYPE_CHECKING:
    from .sync import SyncClient

__all__ = ["App", "Handler", "call", "current_app", "load_app", "publish", "submit"]

log = logging.getLogger("rabbitworker")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Handler:
    """A registered task: the function and how its messages are consumed."""

    fn: Callable[..., Any]
    name: str
    queue: str
    message_type: type[TaskMessage[Any]]
    is_async: bool
    takes_context: bool
    retry: RetryPolicy | None
    timeout: float | None


class App:
    """The registry of an application's tasks and its broker connection.

    ``App("shop")`` reads the broker URL from ``RABBITWORKER_URL`` when it starts;
    keyword options override any setting. ``async with app:`` connects, declares the
    topology and makes the module-level `publish`/`call`/`submit` act on this app.
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
        **settings: Any,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self._overrides: dict[str, Any] = dict(settings)
        if url is not None:
            self._overrides["url"] = url
        if queue_type is not None:
            self._overrides["queue_type"] = queue_type
        if delivery_limit is not None:
            self._overrides["delivery_limit"] = delivery_limit
        self.default_retry = retry or RetryPolicy()
        self.middleware: list[Middleware] = [Retries(), *middleware]
        self.message_types: dict[str, type[TaskMessage[Any]]] = {}
        self.handlers: dict[str, dict[str, Handler]] = {}
        self.patterns: dict[str, set[str]] = {}
        self._settings: Settings | None = None
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self._publisher: Publisher | None = None
        self._rpc: RPCClient | None = None
        self._sync: SyncClient | None = None
        self._entered = 0
        self._disconnected = False  # between a connection loss and the reconnect

    # -- registration -------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """Settings read now from the environment and this app's overrides."""
        if self._settings is None:
            try:
                self._settings = Settings(**self._overrides)
            except ValueError as exc:
                raise ConfigurationError(f"invalid settings: {exc}") from None
        return self._settings

    def configure(self, **settings: Any) -> None:
        """Override settings (before the app starts), e.g. from CLI options."""
        self._overrides.update({k: v for k, v in settings.items() if v is not None})
        self._settings = None

    def register(self, message_type: type[TaskMessage[Any]]) -> None:
        """Make a message type known; two types may not share a routing key."""
        key = message_type.routing_key
        if not key:
            raise ConfigurationError(f"{message_type.__name__} declares no routing_key")
        known = self.message_types.get(key)
        if known is not None and known is not message_type:
            raise ConfigurationError(
                f"routing key {key!r} is used by both {known.__qualname__} and "
                f"{message_type.__qualname__}"
            )
        self.message_types[key] = message_type

    def task(
        self,
        *,
        queue: str,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        bind: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Register a handler for the message type of its first parameter.

        ``async def`` handlers run on the event loop, plain ``def`` ones in a thread
        pool. An optional second parameter receives the `Context`. `bind` adds
        explicit binding patterns (like ``"reports.*"``) to the queue.
        Raises `ConfigurationError` for a duplicate handler or routing key.
        """

        def decorate(func: F) -> F:
            # The frame that applies the decorator can resolve annotations naming
            # classes local to it (string annotations under `from __future__`).
            caller = sys._getframe(1)
            if caller.f_code is App.task.__code__:
                caller = caller.f_back or caller
            message_type, takes_context = _inspect_handler(func, caller.f_locals)
            self.register(message_type)
            on_queue = self.handlers.setdefault(queue, {})
            key = message_type.routing_key
            if key in on_queue:
                raise ConfigurationError(
                    f"queue {queue!r} already has a handler for {key!r}: {on_queue[key].name}"
                )
            on_queue[key] = Handler(
                fn=func,
                name=getattr(func, "__qualname__", repr(func)),
                queue=queue,
                message_type=message_type,
                is_async=inspect.iscoroutinefunction(func),
                takes_context=takes_context,
                retry=retry,
                timeout=timeout,
            )
            self.patterns.setdefault(queue, set()).update(bind)
            return func

        return decorate

    @property
    def queues(self) -> list[str]:
        return sorted(self.handlers)

    def bindings(self) -> dict[str, set[str]]:
        """Each queue's binding keys: its handlers' routing keys and explicit patterns."""
        return {
            q: set(handlers) | self.patterns.get(q, set()) for q, handlers in self.handlers.items()
        }

    def is_bound(self, routing_key: str) -> bool:
        return any(topic_matches(p, routing_key) for keys in self.bindings().values() for p in keys)

    def policy_for(self, handler: Handler) -> RetryPolicy:
        return handler.retry or self.default_retry

    def topology(self) -> Topology:
        """The broker layout this app declares."""
        steps: dict[str, list[int]] = {}
        for queue, handlers in self.handlers.items():
            for h in handlers.values():
                steps.setdefault(queue, []).extend(self.policy_for(h).steps_ms())
        s = self.settings
        return build_topology(
            self.exchange,
            dict(self.bindings()),
            dict(steps),
            queue_type=s.queue_type,
            delivery_limit=s.delivery_limit,
        )

    # -- connection ---------------------------------------------------------

    async def connect(self) -> None:
        """Connect, declare the topology, open the confirmed publishing channel."""
        if self.connection is not None:
            return
        s = self.settings
        connection = await connect(
            s.url,
            timeout=s.connect_timeout,
            heartbeat=s.heartbeat,
            name=f"rabbitworker:{self.name}",
        )

        async def open_and_declare() -> AbstractChannel:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await declare(channel, self.topology())
            return channel

        try:
            channel = await retry_across_reconnects(
                connection,
                f"open channel on {mask_url(s.url)}",
                open_and_declare,
                timeout=s.connect_timeout,
            )
        except BaseException:
            await connection.close()
            raise
        self.connection, self.channel = connection, channel
        self._publisher = Publisher(
            channel,
            self.exchange,
            queue_type=s.queue_type,
            timeout=s.publish_timeout,
            max_message_size=s.max_message_size,
            is_bound=self.is_bound,
        )
        self._rpc = RPCClient(channel, self._publisher)
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        log.info("connected to %s, exchange %s", mask_url(s.url), self.exchange)

    def _on_connection_lost(self, _: Any, exc: BaseException | None = None) -> None:
        # Also called by our own close(), which clears self.connection first, and
        # after every failed reconnect attempt, which is not news.
        if self.connection is None:
            return
        if not self._disconnected:
            self._disconnected = True
            log.warning(
                "connection to %s lost (%s); reconnecting",
                mask_url(self.settings.url),
                type(exc).__name__ if exc is not None else "closed",
            )
        if self._rpc is not None:
            self._rpc.fail_all("the connection to the broker was lost while waiting for a reply")

    def _on_reconnected(self, *_: Any) -> None:
        # aio-pika reopens every channel and re-declares what was declared on it:
        # the whole topology (on the publishing channel), the reply-to consumer,
        # each worker queue's prefetch and consumer.
        self._disconnected = False
        log.info("reconnected to %s; topology and consumers restored", mask_url(self.settings.url))

    async def close(self) -> None:
        """Close the connection; the app can connect again later."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None
        connection, rpc = self.connection, self._rpc
        if self._publisher is not None:
            self._publisher.close()
        self.connection, self.channel, self._publisher, self._rpc = None, None, None, None
        if self in _current:
            _current.remove(self)
        if rpc is not None:
            rpc.fail_all("the app was closed while waiting for a reply")
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> App:
        if self._entered == 0:
            await self.connect()
            _current.append(self)
        self._entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered -= 1
        if self._entered == 0:
            await self.close()

    def _not_connected(self) -> ConfigurationError:
        return ConfigurationError(
            f"app {self.name!r} is not connected: use `async with app:` or `await app.connect()`"
        )

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise self._not_connected()
        return self._publisher

    @property
    def rpc(self) -> RPCClient:
        if self._rpc is None:
            raise self._not_connected()
        return self._rpc

    # -- producing ----------------------------------------------------------

    async def publish(
        self,
        msg: TaskMessage[Any],
        *,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        message_id: str | None = None,
    ) -> str:
        """Publish `msg`; returns its message id once the broker confirmed it.

        With `delay` (seconds or a timedelta) it is delivered no earlier than that.
        Raises `UnroutableError` when no queue is bound for its routing key,
        `NotConfirmed` on a nack or timeout, `MessageTooLarge`, `ConnectionFailed`.
        """
        return await self.publisher.publish(
            msg, headers=headers, delay=delay, message_id=message_id
        )

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        """Publish an RPC request; await `.result(timeout=...)` on what it returns later."""
        return await self.rpc.submit(msg, retry=retry)

    async def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Publish an RPC request and wait for its reply, validated as the reply type.

        Raises `UnroutableError` at once for an unbound routing key, `RPCTimeout`,
        `RemoteError` when the handler raised, `ConnectionFailed`.
        By default a failed request is not retried; `retry=True` applies the task's policy.
        """
        return await self.rpc.call(msg, timeout=timeout, retry=retry)

    def clone(self) -> App:
        """An unconnected app with the same registry and settings, for another loop."""
        other = App.__new__(App)
        other.__dict__.update(self.__dict__)
        other._settings = None
        other.connection, other.channel = None, None
        other._publisher, other._rpc, other._sync = None, None, None
        other._entered = 0
        other._disconnected = False
        return other

    @property
    def sync(self) -> SyncClient:
        """A blocking client for code without an event loop (Django, Flask, scripts)."""
        if self._sync is None:
            from .sync import SyncClient

            self._sync = SyncClient(self)
        return self._sync

    def __repr__(self) -> str:
        return f"App({self.name!r}, exchange={self.exchange!r}, queues={self.queues})"


def _inspect_handler(
    fn: Callable[..., Any], localns: Mapping[str, Any] | None = None
) -> tuple[type[TaskMessage[Any]], bool]:
    params = list(inspect.signature(fn).parameters.values())
    name = getattr(fn, "__qualname__", repr(fn))
    if not params or len(params) > 2:
        raise ConfigurationError(
            f"handler {name} must take the message and optionally a Context: (msg[, ctx])"
        )
    try:
        hints = typing.get_type_hints(fn, localns=dict(localns or {}))
    except Exception as exc:
        raise ConfigurationError(f"handler {name}: cannot resolve annotations: {exc}") from None
    message_type = hints.get(params[0].name)
    if not (inspect.isclass(message_type) and issubclass(message_type, TaskMessage)):
        raise ConfigurationError(
            f"handler {name}: its first parameter must be annotated with a TaskMessage subclass"
        )
    return message_type, len(params) == 2


_current: list[App] = []


def current_app() -> App:
    """The most recently connected app; raises `ConfigurationError` when none is."""
    if not _current:
        raise ConfigurationError(
            "no rabbitworker app is connected: wrap the code in `async with app:` "
            "or use app.publish()/app.call()"
        )
    return _current[-1]


async def publish(
    msg: TaskMessage[Any],
    *,
    headers: Mapping[str, Any] | None = None,
    delay: float | timedelta | None = None,
    message_id: str | None = None,
) -> str:
    """`App.publish` on the connected app."""
    return await current_app().publish(msg, headers=headers, delay=delay, message_id=message_id)


async def call(msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
    """`App.call` on the connected app."""
    return await current_app().call(msg, timeout=timeout, retry=retry)


async def submit(msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
    """`App.submit` on the connected app."""
    return await current_app().submit(msg, retry=retry)


def load_app(path: str) -> App:
    """Import `module:attribute` and return the App there; raises `ConfigurationError`."""
    import importlib
    import os
    import sys

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--app must look like module:attribute, got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise ConfigurationError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, App):
        raise ConfigurationError(f"{path} is a {type(obj).__name__}, not a rabbitworker App")
    return obj
