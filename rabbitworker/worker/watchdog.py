"""The blocked-loop watchdog: a thread that notices when the event loop stops
answering (an `async def` handler calling blocking code) and names the handler and
the line it is stuck on. Every other delivery and the broker heartbeats wait
meanwhile, so this is worth a WARNING."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType

__all__ = ["LoopWatchdog"]

log = logging.getLogger("rabbitworker.worker")


class LoopWatchdog:
    """Warns when the loop has not run a callback for `threshold` seconds.

    `describe(frame)` names what blocks, given the loop thread's innermost frame.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        describe: Callable[[FrameType | None], str],
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.describe = describe
        self.warnings = 0
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._tick()
        self._thread = threading.Thread(
            target=self._watch, name="rabbitworker-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()

    def _tick(self) -> None:
        self._beat = time.monotonic()
        self._handle = self.loop.call_later(self.threshold / 4, self._tick)

    def _watch(self) -> None:
        warned_for: float | None = None
        while not self._stop.wait(self.threshold / 4):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled < self.threshold:
                if warned_for is not None:
                    log.warning("the event loop answers again")
                    warned_for = None
                continue
            if warned_for == beat:
                continue
            warned_for = beat
            self.warnings += 1
            frame = sys._current_frames().get(self._loop_thread)
            log.warning(
                "the event loop has been blocked for %.1f s by %s: an async handler is "
                "calling blocking code (make it a plain def to run it in a thread, or "
                "await the async version); every other message and the broker heartbeat "
                "wait meanwhile",
                stalled,
                self.describe(frame),
            )


def innermost_of(frame: FrameType | None, codes: dict[CodeType, str]) -> tuple[str, str]:
    """The task named by the innermost frame whose code is one of `codes`, and the
    location of the innermost frame (where it is stuck)."""
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
    while frame is not None:
        name = codes.get(frame.f_code)
        if name is not None:
            return name, where
        frame = frame.f_back
    return "", where
