"""The dashboard's Schedules page: each schedule of the app and its next runs (the
rows `rabbitworker schedules` prints), whether a beat holds the leadership, and
whether the broker keeps a last tick for each.

Everything is read without disturbing a running beat: the leadership by a passive
declare of the exclusive leader queue, the last-tick queues by a passive declare
(their depth). The last tick itself is not read: AMQP can only read a message by
taking it (basic.get, then requeue), and a beat taking over in that moment would
find the queue empty and skip the ticks it should catch up on."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from ..schedules.beat import utc_now
from ..schedules.listing import describe
from ..topology import beat_leader_queue_name, beat_state_queue_spec
from ..transport import LockState

if TYPE_CHECKING:
    from ..app import App

__all__ = ["NEXT_RUNS", "ScheduleBoard", "read_schedules", "schedules_page"]

NEXT_RUNS = 3


@dataclass
class ScheduleBoard:
    """What the page shows: whether a beat holds the `leader` lock, and `kept` each
    schedule's number of stored last ticks (0 or 1)."""

    rows: list[dict[str, Any]]
    leader: LockState
    leader_queue: str
    kept: dict[str, int]


async def read_schedules(app: App, count: int = NEXT_RUNS) -> ScheduleBoard:
    transport = app.transport
    leader_queue = beat_leader_queue_name(app.exchange)
    leader = await transport.probe_lock(leader_queue)
    kept: dict[str, int] = {}
    for schedule in app.schedules:
        info = await transport.inspect(beat_state_queue_spec(app.exchange, schedule.name).name)
        kept[schedule.name] = 0 if info is None else info.messages
    rows = describe(app.schedules, utc_now(), count)
    return ScheduleBoard(rows, leader, leader_queue, kept)


def _leader(board: ScheduleBoard) -> str:
    text = {
        "held": "held — a beat process is leading and publishing",
        "free": "none — no beat is running: nothing is published",
    }[board.leader]
    word = {"held": "held", "free": "none"}[board.leader]
    return (
        f'<p id="leader" data-leader="{word}">leader: <b>{word}</b> '
        f'<span class="muted">({escape(text)}; lock <code>{escape(board.leader_queue)}</code>)'
        "</span></p>"
    )


def _row(row: dict[str, Any], kept: int) -> str:
    timing = f"cron <code>{escape(row['cron'])}</code>" if row["cron"] else escape(row["when"])
    runs = "<br>".join(f"<time>{escape(t)}</time>" for t in row["next"])
    last = "kept on the broker" if kept else "none kept yet"
    return (
        f'<tr data-schedule="{escape(row["name"])}"><td class="name">{escape(row["name"])}</td>'
        f'<td class="text">{escape(row["type"])}<br><code>{escape(row["message"])}</code></td>'
        f'<td class="text">{timing}</td><td class="text">{escape(row["tz"])}</td>'
        f'<td class="text">{escape(row["catch_up"])}</td>'
        f'<td class="text next">{runs}</td><td class="text last">{last}</td></tr>'
    )


def schedules_page(board: ScheduleBoard) -> str:
    if not board.rows:
        return '<p id="empty">This app has no schedules (declare them with app.schedule(...)).</p>'
    head = "".join(
        f'<th class="name">{h}</th>'
        for h in ("Schedule", "Message", "When", "Time zone", "Catch up", "Next runs", "Last tick")
    )
    body = "".join(_row(r, board.kept.get(r["name"], 0)) for r in board.rows)
    return f"""{_leader(board)}
<table id="schedules"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p class="muted">Next runs in each schedule's time zone. The last tick's time is not
shown: reading it would take it off the broker for a moment, and a beat taking over
then would not catch up on missed ticks.</p>"""
