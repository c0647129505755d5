"""`rabbitworker result`: a tracked message's status and result, by id, from the
results store."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..results import TaskStatus
from .common import AppOpt, JsonOpt, UrlOpt, fail, friendly, get_app, run_async

__all__ = ["result"]


@friendly
def result(
    message_id: Annotated[
        str, typer.Argument(metavar="MESSAGE_ID", help="the message's id", show_default=False)
    ],
    app_path: AppOpt = None,
    url: UrlOpt = None,
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0, help="wait this long for a final state (succeeded, failed)"
        ),
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Print a tracked message's status and, once it succeeded, its result."""
    app = get_app(app_path, url)

    status = run_async(app, lambda: app.status(message_id, wait=wait))
    if status is None:
        fail(f"no status for message {message_id} (unknown, expired, or not tracked)")
    if as_json:
        typer.echo(status.model_dump_json())
        return
    typer.echo(describe(status))


def describe(status: TaskStatus) -> str:
    """The status as aligned lines for people."""
    rows = [
        ("message", status.message_id),
        ("state", status.state.value),
        ("type", status.type),
        ("queue", status.queue or ""),
        ("attempt", str(status.attempt)),
        ("published", _time(status.published_at)),
        ("started", _time(status.started_at)),
        ("finished", _time(status.finished_at)),
        ("next attempt", _time(status.next_attempt_at)),
        ("worker", f"{status.worker.host} pid {status.worker.pid}" if status.worker else ""),
        ("error", f"{status.error.type}: {status.error.message}" if status.error else ""),
        ("result", json.dumps(status.result) if status.state.value == "succeeded" else ""),
    ]
    return "\n".join(f"{name:<13}{value}" for name, value in rows if value)


def _time(value: object) -> str:
    return value.isoformat(timespec="milliseconds") if hasattr(value, "isoformat") else ""
