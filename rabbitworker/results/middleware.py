"""The worker's side of the results backend, as middleware: a tracked message is
`started` when its handler starts, and its final state (`succeeded` with the result,
`retrying`, `failed`) is written after its follow-ups are confirmed and before it
is acked, so a worker killed in between runs it again rather than losing its result.
A worker adds it by itself when its app has a results store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import MessageTooLarge
from ..middleware.base import Middleware, Outcome, Settled
from ..wire import error_type
from .status import ErrorInfo, State
from .tracking import Tracker

if TYPE_CHECKING:
    from ..context import Context

__all__ = ["ResultTracking"]

_TTL = "results.ttl"
_RESULT = "results.result"
_STARTED = "results.started_at"
_STATES = {"ack": State.SUCCEEDED, "retry": State.RETRYING, "dead_letter": State.FAILED}


class ResultTracking(Middleware):
    """Writes the statuses of tracked messages to the tracker's store."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    async def before_process(self, ctx: Context) -> None:
        ttl = self.tracker.ttl_for(ctx.routing_key, ctx.headers)
        if ttl is None:
            return
        ctx.state[_TTL] = ttl
        started = self.tracker.started(ctx)
        ctx.state[_STARTED] = started.started_at
        await self.tracker.write(started, ttl)

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        if _TTL not in ctx.state or error is not None:
            return
        try:
            ctx.state[_RESULT] = self.tracker.result_json(result)
        except MessageTooLarge as exc:
            # Refused, not truncated; the same would happen on every attempt.
            ctx.outcome = Outcome.dead_letter(exc)

    async def on_settle(self, ctx: Context | None, settled: Settled) -> None:
        delivery = settled.delivery
        ttl = ctx.state.get(_TTL) if ctx is not None else None
        if ctx is None:  # no handler ran (it did not decode): tracked all the same
            ttl = self.tracker.ttl_for(delivery.type, delivery.headers)
        state = _STATES.get(settled.kind)
        if ttl is None or state is None:
            return  # untracked, or handed back: it comes again
        finished = datetime.now(UTC)
        started = ctx.state.get(_STARTED) if ctx is not None else None
        fields: dict[str, Any] = {
            "started_at": started or _when(settled.started_at),
            "finished_at": finished if state.final else None,
        }
        if state is State.SUCCEEDED:
            fields["result"] = ctx.state.get(_RESULT) if ctx is not None else None
        elif settled.error is not None:
            fields["error"] = ErrorInfo(type=error_type(settled.error), message=str(settled.error))
        if state is State.RETRYING:
            fields["next_attempt_at"] = finished + timedelta(milliseconds=settled.delay_ms)
        await self.tracker.write(
            self.tracker.status_of(delivery, settled.queue, state, **fields), ttl
        )


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None
