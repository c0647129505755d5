"""`rabbitworker run`: a worker, or a supervisor of several worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Annotated

import typer

from ..logs import setup_logging
from ..worker import Worker
from .common import AppOpt, UrlOpt, _env_setting, fail, friendly, get_app

__all__ = ["run"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# Options left out take the app's settings (RABBITWORKER_<NAME>, else the default the
# help names), so their own default is None and the help says it in words.
QueuesOpt = Annotated[
    str | None,
    typer.Option(
        metavar="Q1,Q2",
        help="the queues to consume  [default: all of the app's]",
        show_default=False,
    ),
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N", min=1, help="handlers running at once  [default: 100]", show_default=False
    ),
]
PrefetchOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        min=1,
        max=65535,
        help="unacked deliveries per queue  [default: 100]",
        show_default=False,
    ),
]
ProcessesOpt = Annotated[
    int, typer.Option(metavar="N", min=1, help="worker processes under a supervisor")
]
GraceOpt = Annotated[
    float | None,
    typer.Option(
        metavar="SECONDS",
        min=0,
        help="how long running handlers may finish on SIGTERM  [default: 30]",
        show_default=False,
    ),
]
ConnectTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        metavar="SECONDS",
        min=0.1,
        help="how long to keep trying to connect  [default: 10]",
        show_default=False,
    ),
]
LogLevelOpt = Annotated[
    str | None,
    typer.Option(
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR  [env: RABBITWORKER_LOG_LEVEL; default: INFO]",
        show_default=False,
    ),
]


@friendly
def run(
    app_path: AppOpt = None,
    queues: QueuesOpt = None,
    concurrency: ConcurrencyOpt = None,
    prefetch: PrefetchOpt = None,
    url: UrlOpt = None,
    processes: ProcessesOpt = 1,
    grace: GraceOpt = None,
    connect_timeout: ConnectTimeoutOpt = None,
    log_level: LogLevelOpt = None,
    beat: Annotated[
        bool, typer.Option("--beat", help="also publish the app's schedules (one leader)")
    ] = False,
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
    if beat:
        from ..schedules.beat import BeatInWorker

        app.middleware.append(BeatInWorker(app))
    # Built before any process starts: a bad queue name or setting is one line, once.
    worker = Worker(app, queues=names)
    if processes > 1:
        from ..supervisor import Supervisor

        code = Supervisor(processes, child_argv=sys.argv[1:], grace=app.settings.grace).run()
        raise typer.Exit(code)
    _run_worker(worker)


def _run_worker(worker: Worker) -> None:
    from ..supervisor import ready_notifier

    asyncio.run(worker.run(on_ready=ready_notifier()))
    # 130 after a forced stop (a second SIGINT), 3 when stuck threads stopped it.
    code = 130 if worker.forced else 3 if worker.exhausted else 0
    if worker.abandoned_threads or worker.forced:
        # A sync handler's thread cannot be stopped, and the interpreter would wait
        # for it at exit; its message is already back with the broker.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)
