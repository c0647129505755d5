"""The operations side of `rabbitworker run`: which middleware the options add
(metrics, the per-message log line), and a worker run with its HTTP endpoints and
gauge sampler. A worker under a supervisor serves nothing itself: it writes its
metrics to the supervisor's multiprocess directory and its readiness to a file,
and the supervisor serves `/metrics`, `/healthz` and `/readyz` for all of them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..logs import LogFormat, MessageLog
from .health import OPS_DIR_ENV, WorkerHealth
from .http import Response, Route, Server, serve

if TYPE_CHECKING:
    from ..app import App
    from ..worker import Worker

__all__ = ["MULTIPROC_ENV", "OpsOptions", "add_middleware", "metrics_response", "run_worker"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SLOT_ENV = "RABBITWORKER_PROCESS"


@dataclass(frozen=True)
class OpsOptions:
    """`--metrics-port`, `--health-port`, `--log-format`, `--log-bodies`."""

    metrics_port: int | None = None
    health_port: int | None = None
    log_format: LogFormat = "text"
    log_bodies: bool = False
    host: str = "0.0.0.0"

    @property
    def serves(self) -> bool:
        return self.metrics_port is not None or self.health_port is not None

    @property
    def supervised_dir(self) -> str | None:
        """The supervisor's ops directory, in a worker it started."""
        return os.environ.get(OPS_DIR_ENV) or None

    @property
    def metrics(self) -> bool:
        if self.supervised_dir is not None:
            return bool(os.environ.get(MULTIPROC_ENV))
        return self.metrics_port is not None


def add_middleware(app: App, options: OpsOptions) -> None:
    """Add what the options ask for to the app's middleware."""
    if options.metrics:
        from .metrics import Metrics

        app.middleware.append(Metrics())
    # Human-readable logs keep one line per message for DEBUG.
    level = logging.INFO if options.log_format == "json" else logging.DEBUG
    app.middleware.append(MessageLog(level=level, bodies=options.log_bodies))


def metrics_response(path: str | None = None) -> Response:
    """This process's metrics, or with `path` those of every process writing to
    that multiprocess directory."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from .metrics import render

    if path is None:
        body, ctype = render()
        return 200, ctype, body
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


def _routes(options: OpsOptions, health: WorkerHealth) -> list[tuple[int, dict[str, Route]]]:
    ports: list[tuple[int, dict[str, Route]]] = []
    if options.metrics_port is not None:
        ports.append((options.metrics_port, {"/metrics": metrics_response}))
    if options.health_port is not None:
        ports.append((options.health_port, health.routes()))
    return ports


async def run_worker(
    worker: Worker,
    options: OpsOptions,
    on_ready: Callable[[], None] | None,
    *,
    handle_signals: bool = True,
) -> None:
    """Run the worker with its endpoints (or its files, when supervised) and sampler."""
    from .metrics import Sampler

    health = WorkerHealth(worker, asyncio.get_running_loop())
    ops_dir = options.supervised_dir
    server: Server | None = None
    if ops_dir is None and options.serves:
        server = serve(options.host, _routes(options, health))
    also = None
    if ops_dir is not None:
        slot = os.environ.get(SLOT_ENV, "0")
        also = lambda: health.write_file(ops_dir, slot)  # noqa: E731
    sampler = Sampler(worker, metrics=options.metrics, also=also)

    def ready() -> None:
        sampler.start()
        if on_ready is not None:
            on_ready()

    try:
        await worker.run(on_ready=ready, handle_signals=handle_signals)
    finally:
        await sampler.stop()
        if server is not None:
            server.close()
