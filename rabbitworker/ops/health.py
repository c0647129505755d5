"""Health and readiness, for Kubernetes probes: `/healthz` says the process and
its event loop answer; `/readyz` says the worker is connected, consumes every
queue and is not draining (it fails at SIGTERM, before consuming stops).

Under a supervisor (`--processes N`) each worker writes its readiness to a file
in the supervisor's ops directory (`RABBITWORKER_OPS_DIR`) on every sample, and
the supervisor answers both probes for all of them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..wire import JSON
from .http import Response, Route

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = [
    "LOOP_TIMEOUT_S",
    "OPS_DIR_ENV",
    "WorkerHealth",
    "child_ready",
    "health_routes",
    "json_response",
]

OPS_DIR_ENV = "RABBITWORKER_OPS_DIR"
# /healthz fails when the event loop does not run a callback within this time.
LOOP_TIMEOUT_S = 5.0


def json_response(ok: bool, body: dict[str, Any]) -> Response:
    """200 or 503 with a small JSON body."""
    return (200 if ok else 503), JSON, (json.dumps(body) + "\n").encode()


def health_routes(
    healthz: Callable[[], Response], readyz: Callable[[], Response]
) -> dict[str, Route]:
    return {"/healthz": healthz, "/readyz": readyz}


class WorkerHealth:
    """The probes of one worker process, answered from the server's thread."""

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.loop = loop
        self._written: bytes | None = None

    def state(self) -> dict[str, bool]:
        stats = self.worker.stats()
        return {
            "connected": stats.connected,
            "consuming": stats.consuming,
            "draining": stats.draining,
        }

    @property
    def ready(self) -> bool:
        return self.worker.stats().ready

    def healthz(self) -> Response:
        try:
            answer = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop)
            answer.result(timeout=LOOP_TIMEOUT_S)
        except Exception:
            return json_response(False, {"loop": False})
        return json_response(True, {"loop": True})

    def readyz(self) -> Response:
        state = self.state()
        return json_response(self.ready, state)

    def routes(self) -> dict[str, Route]:
        return health_routes(self.healthz, self.readyz)

    def write_file(self, ops_dir: str, slot: str) -> None:
        """Record this worker's readiness for its supervisor (only when it changed)."""
        value = b"1" if self.ready else b"0"
        path = Path(ops_dir, f"ready-{slot}")
        if self._written != value:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(value)
            os.replace(tmp, path)
            self._written = value


def child_ready(ops_dir: str, slot: int) -> bool:
    """Whether the supervised worker in `slot` last said it was ready."""
    try:
        return Path(ops_dir, f"ready-{slot}").read_bytes() == b"1"
    except OSError:
        return False
