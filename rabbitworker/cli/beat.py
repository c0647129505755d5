"""`rabbitworker beat` (publish an app's schedules, one leader among any number of
beat processes) and `rabbitworker schedules` (each schedule and its next runs)."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Annotated

import typer

from ..logs import setup_logging
from ..schedules.beat import Beat, utc_now
from ..schedules.listing import describe
from .common import AppOpt, JsonOpt, UrlOpt, fail, friendly, get_app

__all__ = ["beat", "schedules"]

HeartbeatOpt = Annotated[
    int,
    typer.Option(
        metavar="SECONDS",
        min=1,
        help="the connection's heartbeat: a leader cut off from the broker loses the "
        "leadership after about this long",
    ),
]


@friendly
def beat(
    app_path: AppOpt = None,
    url: UrlOpt = None,
    heartbeat: HeartbeatOpt = 2,
    log_level: Annotated[str, typer.Option(metavar="LEVEL")] = "INFO",
) -> None:
    """Publish the app's scheduled messages (one leader among all beat processes)."""
    app = get_app(app_path, url, heartbeat=heartbeat)
    if not len(app.schedules):
        fail(f"app {app.name!r} has no schedules: declare them with app.schedule(...)")
    setup_logging(log_level.upper(), app.settings.url)
    asyncio.run(_beat(Beat(app)))


async def _beat(running: Beat) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running.stop)
    async with running.app:
        await running.run()


@friendly
def schedules(
    app_path: AppOpt = None,
    count: Annotated[int, typer.Option(metavar="N", min=1, help="next runs to list")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """List the app's schedules and their next run times."""
    app = get_app(app_path, None)
    rows = describe(app.schedules, utc_now(), count)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"app {app.name!r} has no schedules")
    for row in rows:
        typer.echo(f"{row['name']}: {row['message']}, {row['when']}, catch_up={row['catch_up']}")
        for when in row["next"]:
            typer.echo(f"  {when}")
