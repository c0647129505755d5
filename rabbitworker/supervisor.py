"""`--processes N`: a supervisor that starts N worker processes, restarts one that
dies (with back-off), and forwards SIGTERM/SIGINT so all of them drain."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ["Supervisor", "child_args"]

log = logging.getLogger("rabbitworker.supervisor")


def child_args(argv: list[str]) -> list[str]:
    """The `run` arguments for one child: the same, with `--processes 1`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return [*out, "--processes", "1"]


class Supervisor:
    def __init__(self, processes: int, *, child_argv: list[str], grace: float) -> None:
        self.processes = processes
        self.argv = [sys.executable, "-m", "rabbitworker", *child_args(child_argv)]
        self.grace = grace
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.failures: dict[int, int] = {}
        self.stopping = False
        self.restarts = 0

    def _spawn(self, slot: int) -> None:
        self.children[slot] = subprocess.Popen(self.argv)
        log.info("worker %d started, pid %d", slot, self.children[slot].pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.stopping and sig == signal.SIGINT:
            for child in self.children.values():
                child.send_signal(signal.SIGINT)
            return
        self.stopping = True
        log.info("%s received: asking %d worker(s) to drain", sig.name, len(self.children))
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self.processes):
            self._spawn(slot)
        restart_at: dict[int, float] = {}
        while True:
            for slot, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                if self.stopping:
                    continue
                if slot not in restart_at:
                    self.failures[slot] = self.failures.get(slot, 0) + 1
                    pause = min(30.0, 0.5 * 2 ** (self.failures[slot] - 1))
                    log.warning(
                        "worker %d (pid %d) exited with %s; restarting in %.1f s",
                        slot,
                        child.pid,
                        code,
                        pause,
                    )
                    restart_at[slot] = time.monotonic() + pause
                elif time.monotonic() >= restart_at[slot]:
                    del restart_at[slot]
                    self.restarts += 1
                    self._spawn(slot)
            if self.stopping:
                deadline = time.monotonic() + self.grace + 10
                codes = []
                for child in self.children.values():
                    try:
                        codes.append(child.wait(timeout=max(0.1, deadline - time.monotonic())))
                    except subprocess.TimeoutExpired:
                        child.kill()
                        codes.append(child.wait())
                return 0 if all(c == 0 for c in codes) else 1
            time.sleep(0.1)
