"""A schedule: which message to publish and when (cron in a time zone, or a fixed
interval), its tick ids, and what becomes of ticks missed while no beat ran. Pure:
every method takes the time it reasons about."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ..errors import ConfigurationError
from ..message import TaskMessage
from .timing import cron_ticks, every_ticks

__all__ = ["MAX_CATCH_UP", "ON_TIME_S", "CatchUp", "Schedule", "Schedules", "tick_id"]

CatchUp = Literal["latest", "all", "none"]

# A tick published this late is still on time; older ones were missed, and follow
# the schedule's catch_up policy.
ON_TIME_S = 5.0
# At most this many missed ticks are published at once by catch_up="all".
MAX_CATCH_UP = 100


def tick_id(name: str, tick: datetime) -> str:
    """The message id of a schedule's tick: the same in every beat process."""
    return f"schedule:{name}:{tick.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


@dataclass(frozen=True)
class Schedule:
    """A message published at each tick of `cron` (in `tz`) or of `every`."""

    name: str
    message: TaskMessage[Any]
    cron: str | None
    every: timedelta | None
    tz: ZoneInfo
    catch_up: CatchUp

    @classmethod
    def build(
        cls,
        message: TaskMessage[Any],
        *,
        cron: str | None,
        every: timedelta | None,
        name: str | None,
        tz: str | None,
        catch_up: CatchUp,
    ) -> Schedule:
        """A checked schedule; raises `ConfigurationError`."""
        _check(cron, every, catch_up)
        try:
            zone = ZoneInfo(tz or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {tz!r}") from None
        label = name or f"{message.routing_key}/{cron or every}"
        return cls(label, message, cron, every, zone, catch_up)

    @property
    def when(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.tz.key})"
        assert self.every is not None
        return f"every {self.every.total_seconds():g} s"

    def ticks(self, after: datetime) -> Iterator[datetime]:
        """The ticks (UTC) strictly after `after`, ascending."""
        if self.cron is not None:
            return cron_ticks(self.cron, self.tz, after)
        assert self.every is not None
        return every_ticks(self.every, after)

    def next_runs(self, after: datetime, count: int) -> list[datetime]:
        return list(itertools.islice(self.ticks(after), count))

    def due(self, last: datetime | None, now: datetime) -> list[datetime]:
        """The ticks to publish at `now` when `last` was the last one published: the
        ones on time, and the missed ones by `catch_up`. With no `last` (never
        published, or not known) none: a new schedule starts with its next tick."""
        ticks = self._passed(last, now)
        missed = [t for t in ticks if (now - t).total_seconds() > ON_TIME_S]
        on_time = ticks[len(missed) :]
        if not missed or self.catch_up == "none":
            return on_time
        if self.catch_up == "all":
            return (missed + on_time)[-MAX_CATCH_UP:]
        return on_time or missed[-1:]  # latest

    def latest(self, now: datetime, last: datetime | None) -> datetime | None:
        """The newest tick at or before `now` since `last` (else `last`): where the
        next look for due ticks starts once those were dealt with."""
        ticks = self._passed(last, now)
        return ticks[-1] if ticks else last

    def _passed(self, last: datetime | None, now: datetime) -> list[datetime]:
        """The ticks in (last, now], at most MAX_CATCH_UP + 1 of the newest."""
        start = now if last is None else max(last, self._window_start(now))
        return list(itertools.takewhile(lambda t: t <= now, self.ticks(start)))

    def _window_start(self, now: datetime) -> datetime:
        """A time with no more than MAX_CATCH_UP + 1 ticks between it and `now`, so
        that a leader back after a long gap does not walk through every tick."""
        if self.every is not None:
            return now - self.every * (MAX_CATCH_UP + 1)
        assert self.cron is not None
        walls = croniter(self.cron, now.astimezone(self.tz).replace(tzinfo=None))
        for _ in range(MAX_CATCH_UP + 1):
            wall: datetime = walls.get_prev(datetime)
        # An hour earlier still: a wall-clock time can stand for an instant an hour
        # later (the second pass of a repeated hour), and nothing is lost by looking.
        return wall.replace(tzinfo=self.tz).astimezone(UTC) - timedelta(hours=1)


def _check(cron: str | None, every: timedelta | None, catch_up: str) -> None:
    if (cron is None) == (every is None):
        raise ConfigurationError("a schedule takes one of cron='...' or every=timedelta(...)")
    if cron is not None and not croniter.is_valid(cron):
        raise ConfigurationError(f"invalid cron expression {cron!r}")
    if every is not None and (every < timedelta(seconds=1) or every % timedelta(seconds=1)):
        raise ConfigurationError(f"every= must be whole seconds, at least 1, not {every}")
    if catch_up not in get_args(CatchUp):
        raise ConfigurationError(f"catch_up must be 'latest', 'all' or 'none', not {catch_up!r}")


class Schedules:
    """An app's schedules by name."""

    def __init__(self) -> None:
        self.by_name: dict[str, Schedule] = {}

    def add(self, schedule: Schedule) -> Schedule:
        if schedule.name in self.by_name:
            raise ConfigurationError(f"there is already a schedule named {schedule.name!r}")
        self.by_name[schedule.name] = schedule
        return schedule

    def __iter__(self) -> Iterator[Schedule]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)
