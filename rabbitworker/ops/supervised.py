"""The operations side of a supervisor (`rabbitworker run --processes N`): a
temporary ops directory its workers write to (their metrics, in prometheus-client's
multiprocess mode, and their readiness), and the endpoints that answer for all of
them: `/metrics` sums every process's metrics, `/readyz` is ready while the
supervisor is not stopping and every worker is alive and ready."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .health import OPS_DIR_ENV, child_ready, health_routes, json_response
from .http import Response, Route, Server, serve
from .runtime import MULTIPROC_ENV, OpsOptions, metrics_response

__all__ = ["SupervisorOps"]

# (slot, pid, alive and reported started) of each worker, and whether stopping.
Children = Callable[[], list[tuple[int, int, bool]]]


class SupervisorOps:
    """The ops directory and endpoints of one supervisor."""

    def __init__(self, options: OpsOptions) -> None:
        self.options = options
        self.dir = tempfile.mkdtemp(prefix="rabbitworker-ops-")
        self.metrics_dir: str | None = None
        if options.metrics_port is not None:
            self.metrics_dir = str(Path(self.dir, "metrics"))
            Path(self.metrics_dir).mkdir()
        self._server: Server | None = None

    def env(self) -> dict[str, str]:
        """What each worker's environment gets."""
        env = {OPS_DIR_ENV: self.dir}
        if self.metrics_dir is not None:
            env[MULTIPROC_ENV] = self.metrics_dir
        return env

    def start(self, children: Children, stopping: Callable[[], bool]) -> None:
        ports: list[tuple[int, dict[str, Route]]] = []
        if self.options.metrics_port is not None:
            path = self.metrics_dir
            ports.append((self.options.metrics_port, {"/metrics": lambda: metrics_response(path)}))
        if self.options.health_port is not None:

            def readyz() -> Response:
                return self._readyz(children(), stopping())

            ports.append((self.options.health_port, health_routes(self._healthz, readyz)))
        if ports:
            self._server = serve(self.options.host, ports)

    def _healthz(self) -> Response:
        return json_response(True, {"supervisor": True})

    def _readyz(self, children: list[tuple[int, int, bool]], stopping: bool) -> Response:
        workers = {
            str(slot): started and child_ready(self.dir, slot) for slot, _, started in children
        }
        ok = not stopping and bool(workers) and all(workers.values())
        return json_response(ok, {"draining": stopping, "workers": workers})

    def child_exited(self, pid: int) -> None:
        """Drop a dead worker's live gauges."""
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            with contextlib.suppress(Exception):
                multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        shutil.rmtree(self.dir, ignore_errors=True)
