"""`make demo`: find or start a broker, run the example worker on both queues,
run the producer, show the handled messages, stop the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from broker import ensure_broker

from rabbitworker.urls import mask_url

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "emails_reports"


def main() -> int:
    url = ensure_broker()
    print(f"broker: {mask_url(url)}")
    env = {**os.environ, "RABBITWORKER_URL": url}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rabbitworker",
            "run",
            "--app",
            "tasks:app",
            "--queues",
            "emails,reports",
        ],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert worker.stdout is not None
    lines: list[str] = []
    try:
        for line in worker.stdout:
            print(f"  worker | {line}", end="")
            lines.append(line)
            if "worker consuming" in line:
                break
        else:
            print("the worker did not start", file=sys.stderr)
            return 1
        producer = subprocess.run(
            [sys.executable, "producer.py"], cwd=EXAMPLE, env=env, text=True, capture_output=True
        )
        for line in producer.stdout.splitlines():
            print(f"producer | {line}")
        if producer.returncode != 0:
            print(producer.stderr, file=sys.stderr)
            return 1
        deadline = time.monotonic() + 10
        handled = reports = 0
        for line in worker.stdout:
            print(f"  worker | {line}", end="")
            handled += "welcome email sent" in line
            reports += "rendered report" in line
            if (handled == 3 and reports == 1) or time.monotonic() > deadline:
                break
    finally:
        worker.send_signal(signal.SIGTERM)
        # Read the rest through the same buffered stream the loop above used.
        for line in worker.stdout:
            print(f"  worker | {line}", end="")
        worker.wait(timeout=40)
    print(
        f"demo done: {handled} emails and {reports} report handled, "
        f"worker exited with {worker.returncode}"
    )
    return 0 if handled == 3 and reports == 1 and worker.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
