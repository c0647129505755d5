"""The dashboard's pages as HTML, rendered on the server from plain string
templates; every value from the broker or the user goes through `html.escape`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from html import escape
from urllib.parse import quote

from ..dlq import DeadLetter
from ..results import TaskStatus
from ..status import QueueStatus
from .security import CSRF_FIELD

__all__ = ["dead_letters_page", "layout", "message_page", "purge_page", "queues_page", "task_page"]


def layout(title: str, body: str, *, app_name: str, broker: str, schedules: bool = False) -> str:
    """The page around `body`; the nav links Schedules when the app has some."""
    nav = '<a href="/schedules">Schedules</a>' if schedules else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · rabbitworker</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><header><span class="app">rabbitworker · {escape(app_name)}</span>
<a href="/">Queues</a><a href="/tasks">Task</a>{nav}
<span class="broker">{escape(broker)}</span></header>
<main><h1>{escape(title)}</h1>
{body}
</main><script src="/static/dashboard.js"></script></body></html>"""


def _cell(value: int | float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _dlq_link(queue: str) -> str:
    return f"/queues/{quote(queue, safe='')}/dead-letters"


def _queue_row(row: QueueStatus) -> str:
    keys = ("ready", "unacked", "consumers", "retrying", "suspects")
    cells = "".join(f'<td data-key="{k}">{_cell(getattr(row, k))}</td>' for k in keys)
    bad = ' class="bad"' if row.dead_letters else ""
    return (
        f'<tr data-queue="{escape(row.queue)}"><td class="name">{escape(row.queue)}</td>{cells}'
        f'<td data-key="dead_letters"{bad}>{row.dead_letters}</td>'
        f'<td><a href="{_dlq_link(row.queue)}">dead letters</a></td>'
        f'<td data-key="deliver_rate">{_cell(row.deliver_rate)}</td>'
        '<td><svg class="chart" viewBox="0 0 180 40" preserveAspectRatio="none"><title></title>'
        '<polyline class="depth" points=""/><polyline class="rate" points=""/></svg></td></tr>'
    )


def queues_page(rows: list[QueueStatus], *, interval: float, rates: bool) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Ready", "Unacked", "Consumers", "Retrying", "Suspects", "DLQ", "", "Handled/s")
    )
    note = (
        ""
        if rates
        else '<p class="muted">Unacked counts and the handled rate come from the management '
        "API: start the dashboard with <code>--management-url</code> to see them.</p>"
    )
    return f"""<p id="updated" class="muted">loading…</p>
<table id="queues" data-interval="{interval:g}"><thead><tr><th class="name">Queue</th>{head}
<th class="legend"><span class="depth">━ ready</span> <span class="rate">┅ handled/s</span></th>
</tr></thead><tbody>{"".join(_queue_row(r) for r in rows)}</tbody></table>{note}"""


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(token)}">'


def _pretty(body: str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body


def _letter_row(d: DeadLetter) -> str:
    return (
        f'<tr data-id="{escape(d.message_id)}">'
        f'<td><input type="checkbox" name="id" value="{escape(d.message_id)}" '
        f'aria-label="select {escape(d.message_id)}"></td>'
        f'<td class="text"><code>{escape(d.message_id)}</code></td>'
        f'<td class="text">{escape(d.type)}</td><td>{d.attempts}</td>'
        f'<td class="text when">{escape(d.failed_at)}</td>'
        f'<td class="text"><b>{escape(d.error_type)}</b>: {escape(d.error_message)}</td>'
        f'<td class="text"><details><summary>body</summary><pre>{escape(_pretty(d.body))}'
        "</pre></details></td></tr>"
    )


def dead_letters_page(
    queue: str, letters: list[DeadLetter], *, total: int, token: str, note: str = ""
) -> str:
    base = _dlq_link(queue)
    shown = f"{len(letters)} of {total}" if total > len(letters) else str(total)
    notice = f'<p class="note" id="note">{escape(note)}</p>' if note else ""
    if not letters:
        return f'{notice}<p id="empty">No dead letters in {escape(queue)}.dlq.</p>'
    head = "".join(
        f'<th class="name">{h}</th>' for h in ("", "Message id", "Type", "Attempts", "Failed at")
    )
    return f"""{notice}<p>{shown} dead letter(s) in <code>{escape(queue)}.dlq</code>.</p>
<form method="post" action="{base}/replay">{_csrf(token)}
<table><thead><tr>{head}<th class="name">Error</th><th class="name">Body</th></tr></thead>
<tbody>{"".join(_letter_row(d) for d in letters)}</tbody></table>
<p><button type="submit" name="scope" value="selected">Replay selected</button>
<button type="submit" name="scope" value="all">Replay all</button></p></form>
<form method="get" action="{base}/purge"><button class="danger" type="submit">Purge…</button>
</form>"""


def purge_page(queue: str, count: int, *, token: str) -> str:
    base = _dlq_link(queue)
    return f"""<p class="error">Delete all {count} dead letter(s) in
<code>{escape(queue)}.dlq</code> for good? This cannot be undone.</p>
<form method="post" action="{base}/purge">{_csrf(token)}
<input type="hidden" name="confirm" value="yes">
<button class="danger" type="submit">Yes, purge {count} dead letter(s)</button>
<a href="{base}">Cancel</a></form>"""


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(
        f'<tr><th class="name">{escape(k)}</th><td class="text" data-field="{escape(k)}">'
        f"{escape(v)}</td></tr>"
        for k, v in pairs
        if v
    )


def task_page(message_id: str, status: TaskStatus | None, *, store: bool) -> str:
    form = f"""<form method="get" action="/tasks"><label>Message id
<input name="id" size="40" value="{escape(message_id)}"></label>
<button type="submit">Look up</button></form>"""
    if not store:
        return form + '<p class="muted">This app has no results store (App(results=...)).</p>'
    if not message_id:
        return form
    if status is None:
        return form + f"<p>No status for {escape(message_id)} (unknown, expired, not tracked).</p>"
    time = {k: v.isoformat() if v else "" for k, v in _times(status)}
    pairs = [
        ("state", status.state.value),
        ("type", status.type),
        ("queue", status.queue or ""),
        ("attempt", str(status.attempt)),
        *time.items(),
        ("worker", f"{status.worker.host} pid {status.worker.pid}" if status.worker else ""),
        ("error", f"{status.error.type}: {status.error.message}" if status.error else ""),
        ("result", json.dumps(status.result, indent=2) if status.result is not None else ""),
    ]
    return form + f"<table>{_rows(pairs)}</table>"


def _times(status: TaskStatus) -> list[tuple[str, datetime | None]]:
    return [
        ("published", status.published_at),
        ("started", status.started_at),
        ("finished", status.finished_at),
        ("next attempt", status.next_attempt_at),
    ]


def message_page(text: str, *, error: bool = True) -> str:
    kind = "error" if error else "note"
    return f'<p class="{kind}">{escape(text)}</p><p><a href="/">Back to the queues</a></p>'
