"""What `rabbitworker schedules` and the dashboard's Schedules page show of each
schedule: its message, its timing and its next run times (in its time zone)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .schedule import Schedule

__all__ = ["describe"]


def describe(schedules: Iterable[Schedule], now: datetime, count: int) -> list[dict[str, Any]]:
    """One JSON-ready row per schedule, with its next `count` runs after `now`."""
    return [
        {
            "name": s.name,
            "message": s.message.routing_key,
            "type": type(s.message).__name__,
            "when": s.when,
            "cron": s.cron,
            "every_s": None if s.every is None else s.every.total_seconds(),
            "tz": s.tz.key,
            "catch_up": s.catch_up,
            "next": [t.astimezone(s.tz).isoformat() for t in s.next_runs(now, count)],
        }
        for s in schedules
    ]
