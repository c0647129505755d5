"""Tracking: which messages have their status kept, and the writes a producer and a
worker make to the store as a message goes from queued to its final state. Reading
a result back (typed, or as `RemoteError`) is here too."""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from ..errors import ConfigurationError, MessageTooLarge, RemoteError, RPCTimeout
from ..message import reply_adapter
from ..wire import attempt_of, replays_of, results_ttl_of
from .status import ErrorInfo, State, TaskStatus, WorkerInfo
from .store import ResultStore, SaveQueue

if TYPE_CHECKING:
    from ..context import Context
    from ..registry import Registry
    from ..transport import Delivery

__all__ = ["Tracker", "ttl_seconds"]

log = logging.getLogger("rabbitworker.results")

# A store write that takes longer than this is given up (and logged): the work goes on.
WRITE_TIMEOUT_S = 5.0
_JSON: TypeAdapter[Any] = TypeAdapter(Any)


def ttl_seconds(value: bool | float | timedelta | None, default: float) -> float | None:
    """A `results=` / `track=` value as seconds: True is `default`, False/None none."""
    if value is None or value is False:
        return None
    if value is True:
        return default
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ConfigurationError(f"a results ttl must be positive, got {value!r}")
    return seconds


class Tracker:
    """Writes statuses for one app's tracked messages and reads them back."""

    def __init__(
        self,
        store: ResultStore,
        registry: Registry,
        *,
        default_ttl: float,
        max_result_size: int,
    ) -> None:
        self.store = store
        self.registry = registry
        self.default_ttl = default_ttl
        self.max_result_size = max_result_size
        self.worker = WorkerInfo.here()
        self.failed_writes = 0
        self._task_ttls: dict[str, float | None] = {}
        self._queue = store if isinstance(store, SaveQueue) else None

    def ttl_for(self, message_type: str, headers: dict[str, Any]) -> float | None:
        """How long to keep this message's status: its producer's `x-results-ttl`,
        else its task's `results=`; None when it is not tracked."""
        asked = results_ttl_of(headers)
        if asked is not None:
            return asked
        if message_type not in self._task_ttls:
            task_ttl = self.registry.results_ttl_for(message_type)
            self._task_ttls[message_type] = (
                None if task_ttl is None else (task_ttl or self.default_ttl)
            )
        return self._task_ttls[message_type]

    async def write(self, status: TaskStatus, ttl: float) -> bool:
        """Save, bounded in time; a failure is logged and counted, never raised."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await self.store.save(status, ttl)
            return True
        except Exception as exc:
            self._failed(status, exc)
            return False

    async def write_started(self, status: TaskStatus, ttl: float) -> None:
        """Save a `started` status. A store that writes its saves in order (a
        `SaveQueue`) gets it queued and the handler does not wait for it: the final
        state is saved after it, and waited for before the ack. Otherwise `write`."""
        if self._queue is None:
            await self.write(status, ttl)
            return
        try:
            written = self._queue.enqueue(status, ttl)
        except Exception as exc:
            self._failed(status, exc)
            return
        written.add_done_callback(functools.partial(self._check, status))

    def _check(self, status: TaskStatus, written: asyncio.Future[None]) -> None:
        if not written.cancelled() and written.exception() is not None:
            self._failed(status, written.exception())

    def _failed(self, status: TaskStatus, exc: BaseException | None) -> None:
        self.failed_writes += 1
        log.error(
            "results store: could not save status %s of message %s (%s: %s); readers see "
            "the previous status until it expires",
            status.state.value,
            status.message_id,
            type(exc).__name__,
            exc,
        )

    async def queued(self, message_id: str, message_type: str, ttl: float, at: datetime) -> None:
        status = TaskStatus(
            message_id=message_id, state=State.QUEUED, type=message_type, published_at=at
        )
        await self.write(status, ttl)

    def started(self, ctx: Context) -> TaskStatus:
        """The `started` status of the message `ctx` is handling."""
        # Built without validation: every value comes from us, and this runs for
        # each tracked message twice.
        return TaskStatus.model_construct(
            message_id=ctx.message_id,
            state=State.STARTED,
            type=ctx.routing_key,
            queue=ctx.queue,
            attempt=ctx.attempt,
            replays=replays_of(ctx.headers),
            published_at=ctx.published_at,
            started_at=datetime.now(UTC),
            worker=self.worker,
        )

    def status_of(self, delivery: Delivery, queue: str, state: State, **fields: Any) -> TaskStatus:
        """A status of `delivery` in `state`, with what its properties tell."""
        return TaskStatus.model_construct(
            message_id=delivery.message_id,
            state=state,
            type=delivery.type,
            queue=queue,
            attempt=attempt_of(delivery.headers),
            replays=replays_of(delivery.headers),
            published_at=delivery.properties.timestamp,
            worker=self.worker,
            **fields,
        )

    def result_json(self, result: Any) -> Any:
        """The result as JSON data; raises `MessageTooLarge` over `max_result_size`."""
        raw = reply_adapter(type(result)).dump_json(result) if result is not None else b"null"
        if len(raw) > self.max_result_size:
            raise MessageTooLarge(
                f"the result of {len(raw)} bytes is over the maximum of "
                f"{self.max_result_size} (max_result_size): it is refused, not truncated"
            )
        return _JSON.validate_json(raw)

    async def read(self, message_id: str, timeout: float) -> Any:
        """The result of a tracked message once it is final, validated as its message
        type's reply type. Raises `RemoteError` when it failed, `RPCTimeout` when it is
        not final within `timeout` (or unknown)."""
        status = await self.store.wait(message_id, timeout)
        if status is None:
            raise RPCTimeout(f"no status for message {message_id} (unknown, expired or untracked)")
        if not status.state.final:
            raise RPCTimeout(
                f"message {message_id} is still {status.state.value} after {timeout:g} s"
            )
        if status.state is State.FAILED:
            error = status.error or ErrorInfo(type="UnknownError", message="")
            raise RemoteError(error.type, error.message)
        message_type = self.registry.message_types.get(status.type)
        reply_type = message_type.reply_type() if message_type is not None else Any
        return reply_adapter(reply_type).validate_python(status.result)
