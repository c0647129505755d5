"""`rabbitworker run`: a worker, or a supervisor of several worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Annotated

import typer

from ..logs import setup_logging
from .common import AppOpt, UrlOpt, _env_setting, fail, friendly, get_app

__all__ = ["run"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@friendly
def run(
    app_path: AppOpt = None,
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            help="comma-separated queues [default: all of the app's]",
            show_default=False,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, help="handlers running at once [default: 100]", show_default=False),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="unacked deliveries per queue [default: 100]", show_default=False
        ),
    ] = None,
    url: UrlOpt = None,
    processes: Annotated[int, typer.Option(min=1, help="worker processes under a supervisor")] = 1,
    grace: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="seconds running handlers may finish on SIGTERM [default: 30]",
            show_default=False,
        ),
    ] = None,
    connect_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="seconds to keep trying to connect [default: 10]", show_default=False
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="DEBUG, INFO, WARNING or ERROR [env: RABBITWORKER_LOG_LEVEL; default: INFO]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a worker on the app's queues."""
    level = (log_level or _env_setting("log_level")).upper()
    if level not in LEVELS:
        fail(f"unknown --log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    app = get_app(
        app_path,
        url,
        connect_timeout=connect_timeout,
        grace=grace,
        concurrency=concurrency,
        prefetch=prefetch,
        log_level=level,
    )
    setup_logging(level, app.settings.url)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    from ..supervisor import Supervisor, ready_notifier
    from ..worker import Worker

    # Built before any process starts: a bad queue name or setting is one line, once.
    worker = Worker(app, queues=names)
    if processes > 1:
        code = Supervisor(processes, child_argv=sys.argv[1:], grace=app.settings.grace).run()
        raise typer.Exit(code)
    asyncio.run(worker.run(on_ready=ready_notifier()))
    code = 130 if worker.forced else 3 if worker.exhausted else 0
    if worker.abandoned_threads or worker.forced:
        # A sync handler's thread cannot be stopped, and the interpreter would wait
        # for it at exit; its message is already back with the broker.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)
