"""`--processes N`: a supervisor that starts N worker processes, restarts one that
dies (with back-off), and forwards SIGTERM/SIGINT so all of them drain.

Each child is a fresh `python -m rabbitworker run` (nothing of the parent's event
loop or connection is inherited). It reports through a pipe once it consumes, so
the supervisor can tell a worker that crashed from one that could not start: a
child that exits with code 2 before it was ready (bad configuration, broker
unreachable past `--connect-timeout`) is retried `STARTUP_ATTEMPTS` times in a row
at most, then the supervisor stops the others and exits 2.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ops.supervised import SupervisorOps

__all__ = [
    "PROCESS_ENV",
    "READY_FD_ENV",
    "STARTUP_ATTEMPTS",
    "Supervisor",
    "child_args",
    "ready_notifier",
]

log = logging.getLogger("rabbitworker.supervisor")

READY_FD_ENV = "RABBITWORKER_READY_FD"
PROCESS_ENV = "RABBITWORKER_PROCESS"  # the child's slot, 0..N-1, for the app to read
STARTUP_ATTEMPTS = 3
# A child that ran this long before dying restarts without back-off.
STABLE_AFTER_S = 60.0
MAX_BACKOFF_S = 30.0
# Time the children get after the grace period to close their connections.
CLOSE_MARGIN_S = 15.0


# Options of the supervisor alone: a child runs with `--processes 1` and serves no
# endpoint (the supervisor serves them for all).
_OWN_OPTIONS = ("--processes", "--metrics-port", "--health-port")


def child_args(argv: list[str]) -> list[str]:
    """The `run` arguments for one child: the same, with `--processes 1` and
    without the ports."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _OWN_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{o}=" for o in _OWN_OPTIONS)):
            continue
        out.append(arg)
    return [*out, "--processes", "1"]


def ready_notifier() -> Callable[[], None] | None:
    """In a child: the callback that tells the supervisor it consumes, if supervised."""
    value = os.environ.pop(READY_FD_ENV, None)
    if not value or not value.isdigit():
        return None
    fd = int(value)

    def notify() -> None:
        with contextlib.suppress(OSError):
            os.write(fd, b"1")
            os.close(fd)

    return notify


def _die_with_parent() -> None:
    # Linux only: a child whose supervisor was SIGKILLed gets SIGTERM and drains,
    # instead of running on unsupervised.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    ready_fd: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    def check_ready(self) -> bool:
        if not self.ready and self.ready_fd >= 0:
            try:
                self.ready = os.read(self.ready_fd, 16) != b""
            except BlockingIOError:
                return False
            except OSError:
                pass
            self.close_pipe()
        return self.ready

    def close_pipe(self) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = -1


class Supervisor:
    """Keeps `processes` worker processes running until SIGTERM/SIGINT."""

    def __init__(
        self,
        processes: int,
        *,
        child_argv: list[str],
        grace: float,
        ops: SupervisorOps | None = None,
    ) -> None:
        self.processes = processes
        self.ops = ops
        self.argv = [sys.executable, "-m", "rabbitworker", *child_args(child_argv)]
        self.grace = grace
        self.children: dict[int, _Child] = {}
        self.restart_at: dict[int, float] = {}
        self.crashes: dict[int, int] = {}
        self.failed_starts: dict[int, int] = {}
        self.stopping = False
        self.forced = False
        self.gave_up = False
        self.restarts = 0

    def run(self) -> int:
        """Supervise until stopped; returns the exit code for the command.

        0 after a clean drain of every child, 130 after a forced stop (a second
        SIGINT), 2 when children could not start, 1 otherwise.
        """
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        self._start_ops()
        try:
            for slot in range(self.processes):
                if not self.stopping:
                    self._spawn(slot)
            while not self.stopping:
                self._check_children()
                now = time.monotonic()
                for slot, when in list(self.restart_at.items()):
                    if now >= when and not self.stopping:
                        del self.restart_at[slot]
                        self.restarts += 1
                        self._spawn(slot)
                time.sleep(0.1)
            return self._wait_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()

    def _close(self) -> None:
        for child in self.children.values():
            child.close_pipe()
        if self.ops is not None:
            self.ops.close()

    def _start_ops(self) -> None:
        if self.ops is not None:
            self.ops.start(self._children_state, lambda: self.stopping)

    def _children_state(self) -> list[tuple[int, int, bool]]:
        """(slot, pid, alive and started) of each worker, for the readiness probe."""
        return [
            (slot, c.proc.pid, c.ready and c.proc.poll() is None)
            for slot, c in sorted(self.children.items())
        ]

    def _spawn(self, slot: int) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        env = {**os.environ, READY_FD_ENV: str(write_fd), PROCESS_ENV: str(slot)}
        if self.ops is not None:
            env.update(self.ops.env())
        try:
            proc = subprocess.Popen(
                self.argv, env=env, pass_fds=(write_fd,), preexec_fn=_die_with_parent
            )
        finally:
            os.close(write_fd)
        self.children[slot] = _Child(slot, proc, read_fd)
        log.info("worker %d started, pid %d", slot, proc.pid)

    def _check_children(self) -> None:
        for slot, child in list(self.children.items()):
            child.check_ready()
            code = child.proc.poll()
            if code is None or slot in self.restart_at:
                continue
            ready = child.check_ready()
            child.close_pipe()
            self._exited(child)
            if self.stopping:
                continue
            if code == 2 and not ready:
                self.failed_starts[slot] = self.failed_starts.get(slot, 0) + 1
                if self.failed_starts[slot] >= STARTUP_ATTEMPTS:
                    log.error(
                        "worker %d could not start %d times in a row (exit code 2); "
                        "stopping the others",
                        slot,
                        STARTUP_ATTEMPTS,
                    )
                    self.gave_up = True
                    self._stop(signal.SIGTERM)
                    return
            elif ready:
                self.failed_starts[slot] = 0
            if time.monotonic() - child.started >= STABLE_AFTER_S:
                self.crashes[slot] = 0
            self.crashes[slot] = self.crashes.get(slot, 0) + 1
            pause = min(MAX_BACKOFF_S, 0.5 * 2 ** (self.crashes[slot] - 1))
            log.warning(
                "worker %d (pid %d) %s; restarting in %.1f s",
                slot,
                child.proc.pid,
                _describe_exit(code),
                pause,
            )
            self.restart_at[slot] = time.monotonic() + pause

    def _exited(self, child: _Child) -> None:
        if self.ops is not None:
            self.ops.child_exited(child.proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.stopping:
            if sig == signal.SIGINT and not self.forced:
                log.warning("second %s: asking the workers to stop now", sig.name)
                self.forced = True
                self._forward(signal.SIGINT)
            return
        log.info("%s received: asking %d worker(s) to drain", sig.name, len(self.children))
        self._stop(signal.SIGTERM)

    def _stop(self, sig: signal.Signals) -> None:
        self.stopping = True
        self.restart_at.clear()
        self._forward(sig)

    def _forward(self, sig: signal.Signals) -> None:
        for child in self.children.values():
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)

    def _wait_all(self) -> int:
        deadline = time.monotonic() + self.grace + CLOSE_MARGIN_S
        clean = True
        for child in self.children.values():
            was_running = child.proc.returncode is None
            try:
                code = child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker %d (pid %d) did not stop in time; killing it",
                    child.slot,
                    child.proc.pid,
                )
                child.proc.kill()
                code = child.proc.wait()
            # Killed by our SIGTERM means it had not installed its handlers yet, so
            # it was not consuming: nothing of it is lost.
            if was_running and code not in (0, -signal.SIGTERM):
                clean = False
        if self.gave_up:
            return 2
        if self.forced:
            return 130
        return 0 if clean else 1


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
