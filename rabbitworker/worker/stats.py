"""What a running worker reports about itself: one `WorkerStats` snapshot, read by
the operations side (metrics, health and readiness, the supervisor's view of its
workers) and by anything that asks what a worker is doing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

__all__ = ["InFlight", "WorkerStats"]


@dataclass(frozen=True, slots=True)
class InFlight:
    """A handler running now: its message, the queue, for how many seconds."""

    message_id: str
    type: str
    queue: str
    seconds: float


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A worker at one moment (`Worker.stats()`).

    `outcomes` counts the deliveries whose handler ran, by how they were settled
    ("ack", "retry", "dead_letter", or "handed_back": requeued because a follow-up
    could not be published); `handled` is those that reached an outcome (all but
    "handed_back"). `handed_back` counts the deliveries the drain returned to their
    queue, unstarted or interrupted. `waiting` is, per queue, the deliveries held
    until a concurrency slot frees up. `abandoned_threads` are sync handlers still
    running in threads given up on (`abandoned_threads_total` since the start).
    """

    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    prefetch: int
    started_at: datetime | None  # None until started
    outcomes: Mapping[str, int]
    in_flight: tuple[InFlight, ...]
    waiting: Mapping[str, int]
    handed_back: int
    suspects_moved: int
    abandoned_threads: int
    abandoned_threads_total: int
    blocked_loop_warnings: int
    connected: bool
    consuming: bool
    draining: bool

    @property
    def handled(self) -> int:
        """Deliveries whose handler ran to an outcome (requeued ones left out)."""
        return sum(n for kind, n in self.outcomes.items() if kind != "handed_back")

    def running(self, queue: str) -> int:
        """Handlers of `queue` running now."""
        return sum(1 for f in self.in_flight if f.queue == queue)

    @property
    def ready(self) -> bool:
        """Ready for work (`/readyz`): connected, consuming every queue, not draining."""
        return self.connected and self.consuming and not self.draining
