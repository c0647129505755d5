"""`rabbitworker status`: what waits where, per queue of the app, as a table or JSON."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import typer

from ..app import App
from ..status import gather_status, status_json, status_table
from .common import AppOpt, JsonOpt, UrlOpt, friendly, get_app

__all__ = ["ManagementOpt", "status"]

ManagementOpt = Annotated[
    str | None,
    typer.Option(
        "--management-url",
        metavar="URL",
        help="the management API (http://user:pass@host:15672/) for unacked counts and rates",
        show_default=False,
    ),
]


@friendly
def status(
    app_path: AppOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="refresh until interrupted (Ctrl-C)")
    ] = False,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.1, help="refresh period with --watch")
    ] = 2.0,
    management_url: ManagementOpt = None,
) -> None:
    """Per queue: ready, unacked, consumers, retrying, crash suspects, dead letters."""
    app = get_app(app_path, url)
    asyncio.run(_show(app, as_json=as_json, watch=watch, interval=interval, mgmt=management_url))


async def _show(app: App, *, as_json: bool, watch: bool, interval: float, mgmt: str | None) -> None:
    async with app:
        while True:
            rows = await gather_status(app, management_url=mgmt)
            if as_json:
                typer.echo(status_json(rows))
            else:
                if watch:
                    # Clear the screen and go home, like `watch(1)`.
                    typer.echo("\x1b[2J\x1b[H", nl=False)
                    typer.echo(f"{app.name}  {dt.datetime.now():%H:%M:%S}  (Ctrl-C to stop)")
                typer.echo(status_table(rows, rates=mgmt is not None))
            if not watch:
                return
            await asyncio.sleep(interval)
