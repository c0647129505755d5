"""Find a RabbitMQ for the demo: RABBITWORKER_URL, one on 127.0.0.1:5672, or start
the locally installed server. Prints the URL (password masked) it settled on."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time


def port_open(host: str = "127.0.0.1", port: int = 5672) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_broker() -> str:
    url = os.environ.get("RABBITWORKER_URL")
    if url:
        return url
    url = "amqp://guest:guest@127.0.0.1:5672/"
    if port_open():
        return url
    server = shutil.which("rabbitmq-server") or (
        "/usr/sbin/rabbitmq-server" if os.path.exists("/usr/sbin/rabbitmq-server") else None
    )
    if server is None:
        sys.exit(
            "no RabbitMQ on 127.0.0.1:5672 and none installed: install one "
            "(apt-get install rabbitmq-server) or run "
            "`docker run -d -p 5672:5672 rabbitmq:3-management`, or set RABBITWORKER_URL"
        )
    print("starting the local RabbitMQ (rabbitmq-server -detached)...", flush=True)
    subprocess.run([server, "-detached"], check=False)
    deadline = time.monotonic() + 90
    while not port_open():
        if time.monotonic() > deadline:
            sys.exit("RabbitMQ did not start listening on 127.0.0.1:5672 within 90 s")
        time.sleep(0.5)
    return url
