"""When ticks fall: cron expressions (croniter) read on a time zone's wall clock and
mapped to instants across daylight-saving changes, and fixed intervals aligned on the
Unix epoch (so every beat process computes the same ticks). Pure: the caller passes
the time.

Daylight saving: a wall-clock time that does not exist (the hour skipped in spring)
runs once, at the instant the clock jumps; a wall-clock time that happens twice (the
hour repeated in autumn) runs once, at its first occurrence, unless the expression's
hour field is a wildcard (``*`` or ``*/n``), whose ticks follow real time through
both passes of that hour.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

__all__ = ["EPOCH", "cron_ticks", "every_ticks", "hour_is_wildcard", "wall_instants"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Wall-clock times as far back as this are looked at again, so that the second pass of
# a repeated hour is not missed by a search that starts inside it.
_LOOKBACK = timedelta(hours=3)


def every_ticks(interval: timedelta, after: datetime) -> Iterator[datetime]:
    """The multiples of `interval` since the epoch strictly after `after` (UTC)."""
    step = interval // _US
    k = (after - EPOCH) // _US // step + 1
    while True:
        yield EPOCH + timedelta(microseconds=k * step)
        k += 1


def hour_is_wildcard(expr: str) -> bool:
    fields = expr.split()
    return len(fields) >= 2 and fields[1].startswith("*")


def wall_instants(wall: datetime, tz: ZoneInfo, *, both: bool) -> list[datetime]:
    """The instants (UTC) a naive wall-clock time of `tz` stands for: one; the jump's
    instant for a skipped time; the first (or, with `both`, both) of a repeated time."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # repeated: fold 0 is the earlier pass
        return [first, second] if both else [first]
    return [_jump(second, first, tz)]  # skipped: the clock jumps in between


def _jump(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The instant in (before, after] where `tz`'s offset changes (to the second)."""
    offset = before.astimezone(tz).utcoffset()
    lo, hi = before, after
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def cron_ticks(expr: str, tz: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """The ticks (UTC, ascending, no repeats) of `expr` in `tz` strictly after `after`."""
    both = hour_is_wildcard(expr)
    start = (after.astimezone(tz) - _LOOKBACK).replace(tzinfo=None)
    walls = croniter(expr, start)
    pending: list[datetime] = []
    last = after
    while True:
        instants = wall_instants(walls.get_next(datetime), tz, both=both)
        # Later wall-clock times never map before this one's first instant.
        while pending and pending[0] <= instants[0]:
            tick = heapq.heappop(pending)
            if tick > last:
                last = tick
                yield tick
        for instant in instants:
            heapq.heappush(pending, instant)
