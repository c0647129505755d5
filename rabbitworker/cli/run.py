"""`rabbitworker run`: a worker, or a supervisor of several worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Annotated

import typer

from ..app import App
from ..logs import setup_logging
from ..ops.runtime import OpsOptions, add_middleware, run_worker
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

MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        metavar="PORT",
        min=0,
        max=65535,
        help="serve Prometheus /metrics on this port (needs rabbitworker[metrics])",
        show_default=False,
    ),
]
HealthPortOpt = Annotated[
    int | None,
    typer.Option(
        metavar="PORT",
        min=0,
        max=65535,
        help="serve /healthz and /readyz on this port (may be the metrics port)",
        show_default=False,
    ),
]
LogFormatOpt = Annotated[
    str | None,
    typer.Option(
        metavar="FORMAT",
        help="text, or json: one JSON object per line  [default: text]",
        show_default=False,
    ),
]
LogBodiesOpt = Annotated[
    bool, typer.Option("--log-bodies", help="put message bodies in the per-message log lines")
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
    metrics_port: MetricsPortOpt = None,
    health_port: HealthPortOpt = None,
    log_format: LogFormatOpt = None,
    log_bodies: LogBodiesOpt = False,
) -> None:
    """Run a worker on the app's queues."""
    level = (log_level or _env_setting("log_level")).upper()
    if level not in LEVELS:
        fail(f"unknown --log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    if log_format not in (None, "text", "json"):
        fail(f"unknown --log-format {log_format!r}: use text or json")
    app = get_app(
        app_path,
        url,
        connect_timeout=connect_timeout,
        grace=grace,
        concurrency=concurrency,
        prefetch=prefetch,
        log_level=level,
        metrics_port=metrics_port,
        health_port=health_port,
        log_format=log_format,
        log_bodies=log_bodies or None,
    )
    _start(app, level, queues, processes=processes, beat=beat)


def _start(app: App, level: str, queues: str | None, *, processes: int, beat: bool) -> None:
    s = app.settings
    ops = OpsOptions(s.metrics_port, s.health_port, s.log_format, s.log_bodies)
    if ops.metrics_port is not None:
        from ..ops.metrics import require

        require()  # before any process starts
    setup_logging(level, s.url, fmt=s.log_format)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    if beat:
        from ..schedules.beat import BeatInWorker

        app.middleware.append(BeatInWorker(app))
    # Built before any process starts: a bad queue name or setting is one line, once.
    worker = Worker(app, queues=names)
    if processes > 1:
        _supervise(processes, app.settings.grace, ops)
    add_middleware(app, ops)
    _run_worker(worker, ops)


def _supervise(processes: int, grace: float, ops: OpsOptions) -> None:
    from ..supervisor import Supervisor

    supervisor_ops = None
    if ops.serves:
        from ..ops.supervised import SupervisorOps

        supervisor_ops = SupervisorOps(ops)
    supervisor = Supervisor(processes, child_argv=sys.argv[1:], grace=grace, ops=supervisor_ops)
    raise typer.Exit(supervisor.run())


def _run_worker(worker: Worker, ops: OpsOptions) -> None:
    from ..supervisor import ready_notifier

    asyncio.run(run_worker(worker, ops, ready_notifier()))
    # 130 after a forced stop (a second SIGINT), 3 when stuck threads stopped it.
    code = 130 if worker.forced else 3 if worker.exhausted else 0
    if worker.stats().abandoned_threads or worker.forced:
        # A sync handler's thread cannot be stopped, and the interpreter would wait
        # for it at exit; its message is already back with the broker.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)
