"""The worker's side of the results backend, as middleware: a tracked message is
`started` when its handler starts (queued without waiting when the store keeps its
saves in order), and its final state (`succeeded` with the result,
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
        await self.tracker.write_started(started, ttl)

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
        if ctx is not None:
            ttl = ctx.state.get(_TTL)
        else:  # no handler ran (it did not decode): tracked all the same
            ttl = self.tracker.ttl_for(delivery.type, delivery.headers)
        state = _STATES.get(settled.kind)
        if ttl is None or state is None:
            return  # untracked, or handed back: it comes again
        fields = _final_fields(ctx, settled, state)
        status = self.tracker.status_of(delivery, settled.queue, state, **fields)
        await self.tracker.write(status, ttl)


def _final_fields(ctx: Context | None, settled: Settled, state: State) -> dict[str, Any]:
    """What a `succeeded`, `retrying` or `failed` status says beyond the delivery."""
    state_of = ctx.state if ctx is not None else {}
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "started_at": state_of.get(_STARTED) or _when(settled.started_at),
        "finished_at": now if state.final else None,
    }
    if state is State.SUCCEEDED:
        fields["result"] = state_of.get(_RESULT)
    elif settled.error is not None:
        fields["error"] = ErrorInfo(type=error_type(settled.error), message=str(settled.error))
    if state is State.RETRYING:
        fields["next_attempt_at"] = now + timedelta(milliseconds=settled.delay_ms)
    return fields


def _when(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None
