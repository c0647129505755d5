"""What the results backend keeps per message id: `TaskStatus`, its states and the
order they come in, so that a late write never overwrites a newer state."""

from __future__ import annotations

import enum
import os
import socket
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["ErrorInfo", "State", "TaskStatus", "WorkerInfo", "now"]


class State(enum.StrEnum):
    """Where a tracked message is: `queued` (published), `started` (a handler runs
    it), `retrying` (an attempt failed; `next_attempt_at` says when the next one
    comes), `succeeded` (with its result) or `failed` (dead-lettered, with the error)."""

    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED)


_PHASE = {State.QUEUED: 0, State.STARTED: 1, State.RETRYING: 2, State.SUCCEEDED: 3, State.FAILED: 3}


class WorkerInfo(BaseModel):
    """The process that ran the attempt."""

    host: str
    pid: int

    @classmethod
    def here(cls) -> WorkerInfo:
        return cls(host=socket.gethostname(), pid=os.getpid())


class ErrorInfo(BaseModel):
    """Why a message failed (its dead letter's `x-error-type` and `x-error-message`)."""

    type: str
    message: str


class TaskStatus(BaseModel):
    """The status of one message, by its id.

    `result` is the handler's return value as JSON data (`App.result()` validates it
    as the message's reply type). Times are UTC; `attempt` counts from 1 and
    `replays` counts `dlq replay`s, which start the count again.
    """

    model_config = ConfigDict(frozen=True)

    message_id: str
    state: State
    type: str
    queue: str | None = None
    attempt: int = 1
    replays: int = 0
    published_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    worker: WorkerInfo | None = None
    result: Any = None
    error: ErrorInfo | None = None

    @property
    def rank(self) -> int:
        """The order of writes: a write with a lower rank than the stored one is
        older news and is dropped (a re-run of attempt 1 after attempt 2 succeeded,
        a `started` that arrives after its `succeeded`)."""
        return (self.replays * 100_000 + min(self.attempt, 9_999)) * 10 + _PHASE[self.state]


def now() -> datetime:
    return datetime.now(UTC)
