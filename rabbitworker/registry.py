"""The registry of an app's message types and tasks, and what follows from it: each
queue's bindings and retry steps, and so the whole topology. Pure: no I/O."""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigurationError
from .message import TaskMessage
from .policy import DEFAULT_RETRY, RetryPolicy
from .topology import QueueType, Topology, build_topology, topic_matches

if TYPE_CHECKING:
    from .pacing import RateLimit

__all__ = ["Registry", "Task"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Task:
    """A registered handler: the function and how its messages are consumed."""

    fn: Callable[..., Any]
    name: str
    queue: str
    message_type: type[TaskMessage[Any]]
    is_async: bool
    takes_context: bool
    retry: RetryPolicy
    timeout: float | None
    results_ttl: float | None = None  # track status and result this long (seconds)
    rate_limit: RateLimit | None = None  # paced handler starts (rabbitworker.pacing)
    concurrency: int | None = None  # at most this many handlers at once per process


class Registry:
    """Message types by routing key, tasks by queue and routing key, and the extra
    binding patterns of each queue."""

    def __init__(self, *, default_retry: RetryPolicy | None = None) -> None:
        self.default_retry = default_retry or DEFAULT_RETRY
        self.message_types: dict[str, type[TaskMessage[Any]]] = {}
        self.tasks: dict[str, dict[str, Task]] = {}
        self.patterns: dict[str, set[str]] = {}

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

    def add_task(
        self,
        fn: Callable[..., Any],
        *,
        queue: str,
        retry: RetryPolicy | None,
        timeout: float | None,
        bind: Iterable[str],
        results_ttl: float | None = None,
        localns: Mapping[str, Any] | None = None,
        rate_limit: RateLimit | None = None,
        concurrency: int | None = None,
    ) -> Task:
        """Register `fn` for the message type of its first parameter on `queue`."""
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
        message_type, takes_context = inspect_handler(fn, localns)
        self.register(message_type)
        on_queue = self.tasks.setdefault(queue, {})
        key = message_type.routing_key
        if key in on_queue:
            raise ConfigurationError(
                f"queue {queue!r} already has a handler for {key!r}: {on_queue[key].name}"
            )
        task = on_queue[key] = Task(
            fn=fn,
            name=getattr(fn, "__qualname__", repr(fn)),
            queue=queue,
            message_type=message_type,
            is_async=inspect.iscoroutinefunction(fn),
            takes_context=takes_context,
            retry=retry or self.default_retry,
            timeout=timeout,
            results_ttl=results_ttl,
            rate_limit=rate_limit,
            concurrency=concurrency,
        )
        self.patterns.setdefault(queue, set()).update(bind)
        return task

    @property
    def queues(self) -> list[str]:
        return sorted(self.tasks)

    def task_for(self, queue: str, message_type: str) -> Task | None:
        return self.tasks.get(queue, {}).get(message_type)

    def results_ttl_for(self, message_type: str) -> float | None:
        """How long a task of `message_type` keeps its results (the longest, when
        several queues handle it); None when none tracks them."""
        ttls = [
            t.results_ttl
            for tasks in self.tasks.values()
            if (t := tasks.get(message_type)) is not None and t.results_ttl is not None
        ]
        return max(ttls) if ttls else None

    def bindings(self) -> dict[str, set[str]]:
        """Each queue's binding keys: its handlers' routing keys and explicit patterns."""
        return {q: set(tasks) | self.patterns.get(q, set()) for q, tasks in self.tasks.items()}

    def is_bound(self, routing_key: str) -> bool:
        """Whether any queue of the app binds a key (or pattern) matching `routing_key`."""
        return any(topic_matches(p, routing_key) for keys in self.bindings().values() for p in keys)

    def topology(self, exchange: str, *, queue_type: QueueType, delivery_limit: int) -> Topology:
        """The broker layout these tasks need."""
        steps: dict[str, list[int]] = {}
        for queue, tasks in self.tasks.items():
            for task in tasks.values():
                steps.setdefault(queue, []).extend(task.retry.steps_ms())
        return build_topology(
            exchange,
            self.bindings(),
            steps,
            queue_type=queue_type,
            delivery_limit=delivery_limit,
        )


def caller_namespace(depth: int) -> dict[str, Any]:
    """The local names of the frame `depth` levels up: the frame that applies a task
    decorator can resolve annotations naming classes local to it."""
    return dict(sys._getframe(depth + 1).f_locals)


def inspect_handler(
    fn: Callable[..., Any], localns: Mapping[str, Any] | None = None
) -> tuple[type[TaskMessage[Any]], bool]:
    """The message type a handler takes, and whether it takes a `Context` too."""
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
