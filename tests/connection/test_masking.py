"""No log line or CLI output shows the broker password: a worker, a supervisor and
the CLI commands run against a broker user whose password is unmistakable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from support import APPS, ROOT, eventually, read_record, unavailable

from rabbitworker.logs import hide_password, mask_secrets
from rabbitworker.urls import mask_url


@dataclass
class BrokerUser:
    url: str
    password: str
    marker: str  # the random part of the password: it must never appear anywhere

    def with_password(self, password: str) -> str:
        parts = urlsplit(self.url)
        user = parts.username or ""
        return self.url.replace(f"{user}:{quote(self.password, safe='')}@", f"{user}:{password}@")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def broker_user(broker_url: str) -> Iterator[BrokerUser]:
    """A RabbitMQ user made for this test, deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("needs rabbitmqctl on this machine to create a broker user")
    parts = urlsplit(broker_url)
    marker = uuid.uuid4().hex
    user, password = f"rwt-mask-{marker[:8]}", f"Pw!{marker}"  # "!" is %21 in the URL
    rabbitmqctl("add_user", user, password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        host = f"{parts.hostname}:{parts.port or 5672}"
        yield BrokerUser(f"amqp://{user}:{quote(password, safe='')}@{host}/", password, marker)
    finally:
        rabbitmqctl("delete_user", user)


def rabbitworker(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a CLI command; returns its stdout and stderr together."""
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
        **(env or {}),
    }
    full_env.pop("RABBITWORKER_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "rabbitworker", *args],
        cwd=APPS,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


async def test_no_log_line_or_cli_output_contains_the_broker_password(
    broker_user: BrokerUser, app_module: Any, worker_process: Any, tmp_path: Path
) -> None:
    m = app_module("two_queues")
    url = broker_user.url
    app_opt = ("--app", "two_queues:app")
    outputs: dict[str, str] = {}

    outputs["topology"] = rabbitworker("topology", *app_opt, env={"RABBITWORKER_URL": url})
    outputs["publish"] = rabbitworker("publish", m.Alpha.routing_key, '{"n": 1}', *app_opt,
                                      "--url", url)  # fmt: skip
    assert outputs["publish"].startswith("exit 0"), outputs["publish"]

    worker = worker_process(*app_opt, "--url", url, "--processes", "2", "--log-level", "DEBUG")
    await eventually(lambda: worker.output.count("worker consuming") == 2, timeout=30)
    await eventually(lambda: bool(read_record(tmp_path)), timeout=30)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    outputs["run"] = worker.output
    assert read_record(tmp_path)[0][:2] == ["alpha", "1"]

    outputs["dlq list"] = rabbitworker("dlq", "list", "--queue", m.name("a"), *app_opt,
                                       "--url", url)  # fmt: skip
    assert "no dead letters" in outputs["dlq list"]

    wrong = f"Wrong-{broker_user.marker}"
    outputs["wrong password"] = rabbitworker(
        "publish", m.Alpha.routing_key, '{"n": 2}', *app_opt,
        "--url", broker_user.with_password(wrong),
    )  # fmt: skip
    assert "authentication failed" in outputs["wrong password"]
    unreachable = url.replace(f"@{urlsplit(url).hostname}:{urlsplit(url).port}", "@127.0.0.1:1")
    outputs["unreachable"] = rabbitworker(
        "run", *app_opt, "--url", unreachable, "--connect-timeout", "1"
    )
    assert outputs["unreachable"].startswith("exit 2")
    assert "cannot connect to amqp://" in outputs["unreachable"]

    for command, text in outputs.items():
        assert broker_user.marker not in text, f"{command} printed the password:\n{text}"
    assert "***" in outputs["run"]
    assert "***" in outputs["unreachable"]


def test_mask_url_hides_the_password_of_an_amqps_url_and_keeps_its_tls_options() -> None:
    url = "amqps://app:s3cr%21t@rabbit.example:5671/prod?cafile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem"
    assert mask_url(url) == (
        "amqps://app:***@rabbit.example:5671/prod?cafile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem"
    )
    assert mask_url("amqps://rabbit.example/") == "amqps://rabbit.example/"


def test_a_hidden_password_is_masked_as_written_and_percent_decoded() -> None:
    hide_password("amqp://u:p%40ss-9f3e1c@h/")
    assert mask_secrets("auth for p%40ss-9f3e1c and p@ss-9f3e1c failed") == (
        "auth for *** and *** failed"
    )
