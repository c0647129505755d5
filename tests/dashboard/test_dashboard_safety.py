"""The dashboard is safe by default: loopback only unless a login is set, every
POST needs its CSRF token, requests for other host names are refused, and the
broker password reaches no page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from support import delete_topology, queue_depth
from support.dashboard import (  # noqa: F401  (fixture)
    board_app,
    csrf_token,
    dashboard_client,
    keep_logging,
    put_dead_letters,
)
from test_masking import BrokerUser, broker_user  # noqa: F401  (fixture)
from typer.testing import CliRunner

from rabbitworker import App
from rabbitworker.cli import cli
from rabbitworker.dashboard import Credentials, is_loopback, parse_auth
from rabbitworker.topology import dead_letter_queue_name


def test_a_public_address_without_a_login_is_refused_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
    keep_logging: None,  # noqa: F811
) -> None:
    monkeypatch.delenv("RABBITWORKER_DASHBOARD_AUTH", raising=False)
    runner = CliRunner()
    done = runner.invoke(cli, ["dashboard", "--app", "ops_console:app", "--host", "0.0.0.0"])
    assert done.exit_code == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: refusing to serve the dashboard on 0.0.0.0 without a login: pass --auth user:pass"
    ]
    bad = runner.invoke(cli, ["dashboard", "--host", "0.0.0.0", "--auth", "nopassword"])
    assert (bad.exit_code, bad.stderr.count("\n")) == (2, 1)
    assert "--auth must look like user:password" in bad.stderr


def test_only_loopback_addresses_count_as_local() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com", ""):
        assert not is_loopback(host), host
    assert parse_auth("ops:a:b") == Credentials("ops", "a:b")
    assert "a:b" not in repr(parse_auth("ops:a:b"))


async def test_a_post_without_its_csrf_token_is_refused(
    make_app: Callable[..., App], prefix: str, amqp: Any
) -> None:
    app, queue = board_app(make_app, prefix)
    dlq = dead_letter_queue_name(queue)
    with dashboard_client(app) as client:
        await put_dead_letters(amqp, queue, "dead-1")
        page = f"/queues/{quote(queue, safe='')}/dead-letters"
        token = csrf_token(client.get(page).text)
        cookies = httpx.Cookies(client.cookies)
        # No token, a wrong one, or a token without the cookie it was made for: 403.
        for form, with_cookie in (
            ({"scope": "all"}, True),
            ({"scope": "all", "csrf": "0" * 64}, True),
            ({"scope": "all", "csrf": token}, False),
            ({"confirm": "yes"}, True),
        ):
            client.cookies = cookies if with_cookie else httpx.Cookies()
            for action in ("replay", "purge"):
                refused = client.post(f"{page}/{action}", data=form)
                assert refused.status_code == 403, (action, form)
                assert "CSRF" in refused.text
        client.cookies = cookies
        assert await queue_depth(amqp, dlq) == 1
        # The same request with its token goes through.
        replayed = client.post(f"{page}/replay", data={"scope": "all", "csrf": token})
        assert replayed.status_code == 303
        assert await queue_depth(amqp, dlq) == 0


async def test_only_a_loopback_host_name_is_answered_without_a_login(
    make_app: Callable[..., App], prefix: str
) -> None:
    app, _ = board_app(make_app, prefix)
    with dashboard_client(app) as client:
        assert client.get("/", headers={"Host": "localhost:8000"}).status_code == 200
        # A page elsewhere that rebinds its DNS name to 127.0.0.1 gets nothing.
        rebound = client.get("/", headers={"Host": "attacker.example"})
        assert rebound.status_code == 421


async def test_with_a_login_every_page_asks_for_it(
    make_app: Callable[..., App], prefix: str
) -> None:
    app, _ = board_app(make_app, prefix)
    login = ("operator", "s3cret-board")
    with dashboard_client(app, credentials=Credentials(*login)) as client:
        for path in ("/", "/api/status", "/tasks", "/static/dashboard.js"):
            refused = client.get(path)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Basic ")
            assert client.get(path, auth=("operator", "nope")).status_code == 401
            assert client.get(path, auth=login).status_code == 200
        # Behind a login, any host name is fine (it is meant to be reached from afar).
        far = client.get("/", auth=login, headers={"Host": "ops.example"})
        assert far.status_code == 200


async def test_the_broker_password_reaches_no_page(
    broker_user: BrokerUser,  # noqa: F811
    broker_url: str,
    prefix: str,
    amqp: Any,
) -> None:
    app, queue = board_app(
        lambda name: App(name, url=broker_user.url, exchange=f"{prefix}.x"), prefix
    )
    management = f"http://admin:{broker_user.password}@127.0.0.1:1/"
    seen: list[str] = []
    try:
        with dashboard_client(app, management_url=management) as client:
            await put_dead_letters(amqp, queue, "dead-2")
            dlq = f"/queues/{quote(queue, safe='')}/dead-letters"
            for path in ("/", "/api/status", dlq, f"{dlq}/purge", "/tasks?id=dead-2", "/x"):
                seen.append(client.get(path).text)
            token = csrf_token(seen[2])
            failed = client.post(f"{dlq}/replay", data={"csrf": token, "id": "not-there"})
            assert failed.status_code == 400
            seen.append(failed.text)
    finally:
        await app.close()
        await delete_topology(broker_url, app.exchange, app.queues)
    assert "management API at http://127.0.0.1:1 did not answer" in seen[1]
    assert "dead-2" in seen[2]
    assert "***@" in seen[0]  # the broker, as its masked URL
    for text in seen:
        assert broker_user.marker not in text
        assert quote(broker_user.password, safe="") not in text
