"""`rabbitworker dashboard`: serve the web dashboard for an app (uvicorn)."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

import typer

from ..app import App
from ..errors import ConfigurationError
from .common import AppOpt, UrlOpt, fail, friendly, get_app
from .status import ManagementOpt

__all__ = ["dashboard"]

AUTH_ENV = "RABBITWORKER_DASHBOARD_AUTH"


@friendly
def dashboard(
    app_path: AppOpt = None,
    url: UrlOpt = None,
    host: Annotated[
        str, typer.Option(help="address to bind; anything but loopback needs --auth")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port to listen on")] = 8000,
    auth: Annotated[
        str | None,
        typer.Option(
            metavar="USER:PASSWORD",
            help=f"require this HTTP basic login [env: {AUTH_ENV}]",
            show_default=False,
        ),
    ] = None,
    management_url: ManagementOpt = None,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.2, help="how often the queues are sampled")
    ] = 2.0,
) -> None:
    """Serve a web page to watch the queues, act on dead letters and look up tasks."""
    try:
        import uvicorn

        from ..dashboard import create_dashboard, is_loopback, parse_auth
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra: pip install 'rabbitworker[dashboard]' ({exc})"
        ) from None
    auth = auth or os.environ.get(AUTH_ENV) or None
    credentials = parse_auth(auth) if auth else None
    if credentials is None and not is_loopback(host):
        fail(f"refusing to serve the dashboard on {host} without a login: pass --auth user:pass")
    app = get_app(app_path, url)
    web = create_dashboard(
        app, credentials=credentials, management_url=management_url, interval=interval
    )
    config = uvicorn.Config(web, host=host, port=port, log_level="warning", access_log=False)
    shown = f"[{host}]" if ":" in host else host
    asyncio.run(_serve(app, uvicorn.Server(config), f"http://{shown}:{port}/"))


async def _serve(app: App, server: Any, address: str) -> None:
    # Connected first, so an unreachable broker is one line and exit code 2.
    async with app:
        typer.echo(f"dashboard of {app.name} on {address} (Ctrl-C to stop)")
        await server.serve()
