"""`python -m rabbitworker ...` as a subprocess, timed, for tests of what the command
line prints and how fast it gives up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from support import APPS, ROOT

__all__ = ["Run", "rabbitworker"]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float  # from starting the interpreter to its exit

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_line(self) -> str:
        """The one `error:` line of a failed command; asserts exit code 2, no
        traceback, and nothing after that line."""
        assert self.code == 2, f"exit {self.code}:\n{self.output}"
        assert "Traceback" not in self.output, self.output
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], self.stderr
        return errors[0]


def rabbitworker(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """Run a command in tests/apps with a clean environment: no RABBITWORKER_*
    variable but those in `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITWORKER_")}
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(APPS)])
    full_env.update(env or {})
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "rabbitworker", *args],
        cwd=APPS,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
