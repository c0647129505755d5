"""Schedules without a broker: cron ticks in a time zone across daylight-saving
changes, epoch-aligned intervals, missed ticks by catch-up policy, tick ids, and what
`rabbitworker schedules` lists. The clock is injected: no test waits for real time."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support.cli import rabbitworker

from rabbitworker import App, ConfigurationError, TaskMessage
from rabbitworker.schedules import Schedule, tick_id
from rabbitworker.schedules.schedule import MAX_CATCH_UP

PARIS = ZoneInfo("Europe/Paris")


class Cleanup(TaskMessage, routing_key="sched.cleanup"):
    pass


def at(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=PARIS)


def paris(ticks: list[datetime]) -> list[str]:
    return [t.astimezone(PARIS).strftime("%m-%d %H:%M%z") for t in ticks]


def schedule(**options: Any) -> Schedule:
    options.setdefault("cron", None)
    options.setdefault("every", None)
    options.setdefault("name", "cleanup")
    options.setdefault("tz", None)
    options.setdefault("catch_up", "latest")
    return Schedule.build(Cleanup(), **options)


def test_a_cron_schedule_ticks_on_the_wall_clock_of_its_time_zone() -> None:
    s = schedule(cron="0 2 * * *", tz="Europe/Paris")
    ticks = s.next_runs(at(2026, 1, 10, 12, 0), 2)
    assert paris(ticks) == ["01-11 02:00+0100", "01-12 02:00+0100"]
    assert ticks[0] == datetime(2026, 1, 11, 1, 0, tzinfo=UTC)


def test_a_0230_job_on_the_spring_forward_day_runs_once_when_the_clock_jumps() -> None:
    # 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST; 02:30 does not exist.
    s = schedule(cron="30 2 * * *", tz="Europe/Paris")
    ticks = s.next_runs(at(2026, 3, 28, 12, 0), 3)
    assert paris(ticks) == ["03-29 03:00+0200", "03-30 02:30+0200", "03-31 02:30+0200"]


def test_a_0230_job_on_the_fall_back_day_runs_once_at_the_first_0230() -> None:
    # 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    s = schedule(cron="30 2 * * *", tz="Europe/Paris")
    ticks = s.next_runs(at(2026, 10, 24, 12, 0), 2)
    assert paris(ticks) == ["10-25 02:30+0200", "10-26 02:30+0100"]


def test_an_every_20_minutes_job_follows_real_time_through_the_repeated_hour() -> None:
    s = schedule(cron="*/20 * * * *", tz="Europe/Paris")
    ticks = s.next_runs(at(2026, 10, 25, 1, 50), 8)
    assert [b - a for a, b in itertools.pairwise(ticks)] == [timedelta(minutes=20)] * 7
    assert paris(ticks)[:6] == [
        "10-25 02:00+0200",
        "10-25 02:20+0200",
        "10-25 02:40+0200",
        "10-25 02:00+0100",
        "10-25 02:20+0100",
        "10-25 02:40+0100",
    ]


def test_skipped_wall_times_of_the_spring_gap_collapse_into_one_tick() -> None:
    s = schedule(cron="*/20 2 * * *", tz="Europe/Paris")
    ticks = s.next_runs(at(2026, 3, 29, 0, 0), 2)
    assert paris(ticks) == ["03-29 03:00+0200", "03-30 02:00+0200"]


def test_every_ticks_are_aligned_on_the_epoch_so_all_beats_agree() -> None:
    s = schedule(every=timedelta(seconds=10))
    after = datetime(2026, 5, 1, 12, 0, 3, 500_000, tzinfo=UTC)
    assert [t.second for t in s.next_runs(after, 3)] == [10, 20, 30]
    assert tick_id("cleanup", s.next_runs(after, 1)[0]) == "schedule:cleanup:2026-05-01T12:00:10Z"


def test_a_tick_on_time_is_due_once() -> None:
    s = schedule(every=timedelta(seconds=1))
    now = datetime(2026, 5, 1, 12, 0, 0, 20_000, tzinfo=UTC)
    last = datetime(2026, 5, 1, 11, 59, 59, tzinfo=UTC)
    assert s.due(last, now) == [now.replace(microsecond=0)]
    assert s.due(now.replace(microsecond=0), now) == []


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("latest", ["05:00"]), ("all", ["01:00", "02:00", "03:00", "04:00", "05:00"]), ("none", [])],
)
def test_ticks_missed_while_no_beat_ran_follow_the_catch_up_policy(
    policy: Any, expected: list[str]
) -> None:
    s = schedule(cron="0 * * * *", tz="UTC", catch_up=policy)
    last = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
    now = datetime(2026, 5, 1, 5, 30, tzinfo=UTC)
    assert [t.strftime("%H:%M") for t in s.due(last, now)] == expected
    assert s.latest(now, last) == datetime(2026, 5, 1, 5, 0, tzinfo=UTC)


def test_catching_up_all_after_a_long_gap_is_bounded() -> None:
    s = schedule(every=timedelta(seconds=1), catch_up="all")
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    due = s.due(now - timedelta(days=30), now)
    assert len(due) == MAX_CATCH_UP and due[-1] == now


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression"),
        ({}, "one of cron="),
        ({"cron": "* * * * *", "every": timedelta(seconds=5)}, "one of cron="),
        ({"every": timedelta(milliseconds=500)}, "whole seconds"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"cron": "* * * * *", "catch_up": "some"}, "catch_up must be"),
    ],
)
def test_a_bad_schedule_is_a_configuration_error(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        schedule(**options)


def test_two_schedules_may_not_share_a_name() -> None:
    app = App("sched")
    app.schedule(Cleanup(), every=timedelta(minutes=5), name="cleanup")
    with pytest.raises(ConfigurationError, match="already a schedule named 'cleanup'"):
        app.schedule(Cleanup(), cron="0 * * * *", name="cleanup")


def test_the_schedules_command_lists_each_schedule_with_its_next_runs() -> None:
    run = rabbitworker("schedules", "--app", "beat_app:app", "--count", "2", "--json")
    assert run.code == 0, run.output
    rows = {row["name"]: row for row in json.loads(run.stdout)}
    nightly = rows["nightly-report"]
    assert nightly["when"] == "cron '0 2 * * *' (Europe/Paris)"
    assert [datetime.fromisoformat(t).hour for t in nightly["next"]] == [2, 2]
    assert len(rows["tick"]["next"]) == 2
    text = rabbitworker("schedules", "--app", "beat_app:app")
    assert "nightly-report: " in text.stdout and "catch_up=latest" in text.stdout


def test_beat_for_an_app_without_schedules_is_one_error_line() -> None:
    run = rabbitworker("beat", "--app", "two_queues:app")
    assert run.error_line() == (
        "error: app 'two-queues' has no schedules: declare them with app.schedule(...)"
    )


def test_beat_against_a_broker_that_refuses_is_one_error_line() -> None:
    env = {
        "RABBITWORKER_URL": "amqp://guest:secret@127.0.0.1:1/",
        "RABBITWORKER_CONNECT_TIMEOUT": "1",
    }
    run = rabbitworker("beat", "--app", "beat_app:app", env=env)
    line = run.error_line()
    assert "cannot connect" in line and "secret" not in run.output, line
