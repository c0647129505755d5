"""Helpers for apps run by tests in subprocesses: unique names from the test's
prefix, and a record file the handlers append to."""

from __future__ import annotations

import os
import threading

PREFIX = os.environ.get("RW_TEST_PREFIX", "rwt-manual")
RECORD = os.environ.get("RW_TEST_RECORD", "/tmp/rabbitworker-test-record.txt")
_lock = threading.Lock()


def name(suffix: str) -> str:
    return f"{PREFIX}.{suffix}"


def record(*fields: object) -> None:
    """Append one line; small appends with O_APPEND do not interleave."""
    line = " ".join(str(f) for f in fields) + "\n"
    with _lock, open(RECORD, "a") as f:
        f.write(line)
        f.flush()
