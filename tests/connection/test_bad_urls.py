"""Bad broker URLs on the command line: each gives one line naming the problem and
exit code 2, never the password (at any log level); those that cannot get better
fail at once, the others within --connect-timeout. The URL is given both as --url
and as RABBITWORKER_URL, to `run` and to `publish`."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from support import APPS, ROOT, unavailable
from support.cli import Run, rabbitworker

# Long, so that failing "at once" cannot be mistaken for giving up at the deadline.
PERMANENT_CONNECT_TIMEOUT = 20.0
TRANSIENT_CONNECT_TIMEOUT = 2.0
AT_ONCE_S = 1.5  # beyond the interpreter's own start-up and exit
APP = "two_queues:app"


@dataclass(frozen=True)
class Users:
    """Broker users made for this module; `marker` is in both passwords and must
    never be printed."""

    host: str
    marker: str
    user: str  # may use "/", with a password containing / ? # @ %
    password: str
    lonely: str  # exists, may use no vhost at all
    lonely_password: str

    def url(self, *, password: str | None = None, path: str = "/") -> str:
        secret = quote(self.password if password is None else password, safe="")
        return f"amqp://{self.user}:{secret}@{self.host}{path}"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def users(broker_url: str) -> Iterator[Users]:
    if shutil.which("rabbitmqctl") is None:
        unavailable("needs rabbitmqctl on this machine to create broker users")
    parts = urlsplit(broker_url)
    marker = uuid.uuid4().hex
    made = Users(
        host=f"{parts.hostname}:{parts.port or 5672}",
        marker=marker,
        user=f"rwt-url-{marker[:8]}",
        password=f"a/b?c#d@e%f-{marker}",
        lonely=f"rwt-lonely-{marker[:8]}",
        lonely_password=f"Lonely-{marker}",
    )
    rabbitmqctl("add_user", made.user, made.password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", made.user, ".*", ".*", ".*")
        rabbitmqctl("add_user", made.lonely, made.lonely_password)
        try:
            yield made
        finally:
            rabbitmqctl("delete_user", made.lonely)
    finally:
        rabbitmqctl("delete_user", made.user)


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Case:
    url: Callable[[Users], str]
    says: Callable[[Users], str]  # a fragment of the error line
    permanent: bool = True


def unencoded(char: str) -> Case:
    return Case(
        lambda u: f"amqp://{u.user}:ab{char}{u.marker}@{u.host}/",
        lambda u: "percent-encode '/', '?' and '#' in the user name and password",
    )


CASES: dict[str, Case] = {
    "not a URL": Case(lambda u: "not-a-url", lambda u: "invalid broker URL: not a URL"),
    "one slash": Case(
        lambda u: u.url().replace("amqp://", "amqp:/"),
        lambda u: "one '/' after 'amqp:' where two are needed",
    ),
    **{f"a password with an unencoded {char}": unencoded(char) for char in "/?#"},
    "a port that is not a number": Case(
        lambda u: u.url().replace(u.host, "127.0.0.1:notaport"),
        lambda u: "the port of host '127.0.0.1' is not a number",
    ),
    "the http scheme": Case(
        lambda u: u.url().replace("amqp://", "http://"),
        lambda u: "unsupported scheme 'http': use amqp:// or amqps://",
    ),
    "an unknown vhost": Case(
        lambda u: u.url(path=f"/rwt-no-vhost-{u.marker[:8]}"),
        lambda u: (
            f"refused to open the vhost: NOT_ALLOWED - vhost rwt-no-vhost-{u.marker[:8]} not found"
        ),
    ),
    "a user without permissions": Case(
        lambda u: f"amqp://{u.lonely}:{u.lonely_password}@{u.host}/",
        lambda u: f"NOT_ALLOWED - access to vhost '/' refused for user '{u.lonely}'",
    ),
    "a wrong password": Case(
        lambda u: u.url(password=f"Wrong-{u.marker}"),
        lambda u: "authentication failed (wrong user name or password)",
    ),
    "a closed port": Case(
        lambda u: u.url().replace(u.host, f"127.0.0.1:{closed_port()}"),
        lambda u: f"cannot connect to amqp://{u.user}:***@127.0.0.1:",
        permanent=False,
    ),
}

WAYS = {
    "run --url at DEBUG": ("run", "--url", "DEBUG"),
    "run with RABBITWORKER_URL": ("run", "env", "INFO"),
    "publish --url": ("publish", "--url", ""),
    "publish with RABBITWORKER_URL": ("publish", "env", ""),
}


@pytest.fixture(scope="module")
def start_up_s(users: Users) -> float:
    """How long a command takes that loads the app and connects to nothing."""
    runs = [
        rabbitworker("topology", "--app", APP, env={"RW_TEST_PREFIX": "rwt-url"}) for _ in range(3)
    ]
    assert all(run.code == 0 for run in runs), runs
    return statistics.median(run.seconds for run in runs)


def attempt(way: str, url: str, connect_timeout: float, prefix: str) -> Run:
    command, how, level = WAYS[way]
    env = {"RW_TEST_PREFIX": prefix, "RABBITWORKER_CONNECT_TIMEOUT": f"{connect_timeout:g}"}
    args = [command, "--app", APP]
    args += ["--log-level", level] if level else []
    args += [f"{prefix}.alpha", '{"n": 1}'] if command == "publish" else []
    if how == "--url":
        args += ["--url", url]
    else:
        env["RABBITWORKER_URL"] = url
    return rabbitworker(*args, env=env, timeout=connect_timeout + 60)


@pytest.fixture(scope="module")
def timings(start_up_s: float) -> Iterator[dict[str, float]]:
    """Collects how long each bad URL took beyond start-up; printed at the end of the
    module (visible with -s)."""
    taken: dict[str, float] = {}
    yield taken
    print(f"\nstart-up of a command that connects to nothing: {start_up_s:.2f} s")
    for name, seconds in sorted(taken.items()):
        print(f"  {seconds:6.2f} s beyond start-up  {name}")


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("case", CASES)
def test_a_bad_url_gives_one_line_naming_the_problem_and_never_the_password(
    case: str, way: str, users: Users, start_up_s: float, timings: dict[str, float], prefix: str
) -> None:
    bad = CASES[case]
    timeout = PERMANENT_CONNECT_TIMEOUT if bad.permanent else TRANSIENT_CONNECT_TIMEOUT

    run = attempt(way, bad.url(users), timeout, prefix)

    line = run.error_line()
    assert bad.says(users) in line
    assert users.marker not in run.output
    if "DEBUG" not in way:
        assert run.stderr.strip() == line and not run.stdout
    took = run.seconds - start_up_s
    timings[f"{case} / {way}"] = took
    if bad.permanent:
        assert took < AT_ONCE_S, f"took {took:.2f} s beyond start-up"
    else:
        assert f"within {timeout:g} s" in line
        assert timeout <= run.seconds < start_up_s + timeout + 1.0


def test_a_password_with_slash_question_mark_hash_at_and_percent_connects_when_encoded(
    users: Users, app_module: Any, prefix: str
) -> None:
    module = app_module("two_queues")  # deletes the app's exchanges and queues afterwards
    url = users.url()
    assert "%2F" in url and "%3F" in url and "%23" in url and "%40" in url and "%25" in url

    published = rabbitworker(
        "publish", module.Alpha.routing_key, '{"n": 1}', "--app", APP, "--url", url,
        env={"RW_TEST_PREFIX": prefix},
    )  # fmt: skip

    assert published.code == 0, published.output
    assert uuid.UUID(published.stdout.strip())
    assert users.marker not in published.output


BUGGY_APP = """
from rabbitworker import App, TaskMessage

app = App("buggy", exchange="rwt-buggy.x")


class Note(TaskMessage, routing_key="buggy.note"):
    n: int


app.register(Note)


def broken(app, settings):
    raise RuntimeError(f"a bug that quotes {settings.url}")


app.transport_factory = broken
"""


def test_a_bug_prints_its_traceback_with_the_password_masked_and_exits_1(
    tmp_path: Path, users: Users
) -> None:
    (tmp_path / "buggy_app.py").write_text(BUGGY_APP)
    path = os.pathsep.join([str(ROOT), str(APPS), str(tmp_path)])

    run = rabbitworker(
        "publish", "buggy.note", '{"n": 1}', "--app", "buggy_app:app", "--url", users.url(),
        env={"PYTHONPATH": path},
    )  # fmt: skip

    assert run.code == 1, run.output
    assert "Traceback" in run.stderr
    assert f"RuntimeError: a bug that quotes amqp://{users.user}:***@" in run.stderr
    assert users.marker not in run.output
