"""The dashboard is safe by default: loopback only unless a login is set, every
POST needs its CSRF token, requests for other host names are refused, and the
broker password reaches no page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
from conftest import APPS, ROOT, eventually, queue_depth
from dashboard_support import start_dashboard  # noqa: F401  (fixture)
from test_masking import BrokerUser, broker_user  # noqa: F401  (fixture)

from rabbitworker.dashboard import Credentials, is_loopback, parse_auth
from rabbitworker.topology import dead_letter_queue_name


def dashboard_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)])}
    env.pop("RABBITWORKER_DASHBOARD_AUTH", None)
    return subprocess.run(
        [sys.executable, "-m", "rabbitworker", "dashboard", *args],
        cwd=APPS, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_public_address_without_a_login_is_refused_with_one_line() -> None:
    done = dashboard_cli("--app", "ops_console:app", "--host", "0.0.0.0")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: refusing to serve the dashboard on 0.0.0.0 without a login: pass --auth user:pass"
    ]
    bad = dashboard_cli("--app", "ops_console:app", "--host", "0.0.0.0", "--auth", "nopassword")
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1)
    assert "--auth must look like user:password" in bad.stderr


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, page
    return found.group(1)


async def test_a_post_without_its_csrf_token_is_refused(
    app_module: Any,
    start_dashboard: Any,  # noqa: F811
    amqp: Any,
) -> None:
    m = app_module("ops_console")
    queue = m.name("jobs")
    async with m.app:
        await m.app.publish(m.Job(n=1))
    channel = await amqp.channel()  # a dead letter to act on
    await channel.default_exchange.publish(
        aio_pika.Message(b'{"n": 9}', message_id="dead-1", type=m.name("job")),
        dead_letter_queue_name(queue),
    )
    await channel.close()
    board = start_dashboard("--app", "ops_console:app")
    replay = f"{board.base}/queues/{quote(queue, safe='')}/dead-letters/replay"
    purge = f"{board.base}/queues/{quote(queue, safe='')}/dead-letters/purge"
    async with httpx.AsyncClient() as client:
        listing = await client.get(f"{board.base}/queues/{quote(queue, safe='')}/dead-letters")
        assert listing.status_code == 200
        token = csrf_token(listing.text)
        # No token, a wrong one, or a token without the cookie it belongs to: 403.
        for form, cookies in (
            ({"scope": "all"}, client.cookies),
            ({"scope": "all", "csrf": "0" * 64}, client.cookies),
            ({"scope": "all", "csrf": token}, httpx.Cookies()),
            ({"confirm": "yes"}, client.cookies),
        ):
            async with httpx.AsyncClient(cookies=cookies) as other:
                for url in (replay, purge):
                    refused = await other.post(url, data=form)
                    assert refused.status_code == 403, (url, form)
                    assert "CSRF" in refused.text
        assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 1
        # With its token the same purge needs one more confirmation, then happens.
        asked = await client.post(purge, data={"csrf": token})
        assert asked.status_code == 200
        assert "Yes, purge 1 dead letter(s)" in asked.text
        assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 1
        done = await client.post(purge, data={"csrf": token, "confirm": "yes"})
        assert done.status_code == 303
        assert done.headers["location"].endswith("?purged=1")
        await eventually(lambda: _depth_is(amqp, dead_letter_queue_name(queue), 0), timeout=5)
        # A page asked for under another host name (DNS rebinding) is refused.
        rebound = await client.get(f"{board.base}/", headers={"Host": "attacker.example:80"})
        assert rebound.status_code == 421


async def _depth_is(amqp: Any, name: str, n: int) -> bool:
    return await queue_depth(amqp, name) == n


async def test_with_a_login_every_page_asks_for_it(
    app_module: Any,
    start_dashboard: Any,  # noqa: F811
) -> None:
    app_module("ops_console")
    login = ("operator", "s3cret-board")
    board = start_dashboard("--app", "ops_console:app", "--auth", ":".join(login), auth=login)
    async with httpx.AsyncClient() as client:
        for path in ("/", "/api/status", "/tasks", "/static/dashboard.js"):
            assert (await client.get(board.base + path)).status_code == 401
            wrong = await client.get(board.base + path, auth=("operator", "nope"))
            assert wrong.status_code == 401
            assert (await client.get(board.base + path, auth=login)).status_code == 200


async def test_the_broker_password_reaches_no_page(
    broker_user: BrokerUser,  # noqa: F811
    app_module: Any,
    start_dashboard: Any,  # noqa: F811
    amqp: Any,
    tmp_path: Path,
) -> None:
    m = app_module("ops_console")
    queue = m.name("jobs")
    board = start_dashboard(
        "--app", "ops_console:app", "--url", broker_user.url,
        "--management-url", f"http://admin:{broker_user.password}@127.0.0.1:1/",
        env={"RABBITWORKER_URL": broker_user.url},
    )  # fmt: skip
    channel = await amqp.channel()
    await channel.default_exchange.publish(
        aio_pika.Message(b"{}", message_id="dead-2", headers={"x-error-message": "bad"}),
        dead_letter_queue_name(queue),
    )
    await channel.close()
    dlq = f"/queues/{quote(queue, safe='')}/dead-letters"
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=board.base) as client:
        for path in ("/", "/api/status", dlq, f"{dlq}/purge", "/tasks?id=dead-2", "/nowhere"):
            seen.append((await client.get(path)).text)
        token = csrf_token(seen[2])
        failed = await client.post(f"{dlq}/replay", data={"csrf": token, "id": "not-there"})
        assert failed.status_code == 400
        seen.append(failed.text)
    status = seen[1]
    assert "management API at http://127.0.0.1:1 did not answer" in status
    assert "dead-2" in seen[2]
    for text in seen:
        assert broker_user.marker not in text
        assert quote(broker_user.password, safe="") not in text
    assert broker_user.marker not in board.output


def test_only_loopback_addresses_count_as_local() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", ""):
        assert not is_loopback(host), host
    assert parse_auth("ops:a:b") == Credentials("ops", "a:b")
    assert "a:b" not in repr(parse_auth("ops:a:b"))
