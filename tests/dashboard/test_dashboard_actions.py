"""The dashboard's pages and dead-letter actions over HTTP, as the page's forms send
them (the dashboard runs in this process): several selected dead letters, then all
of them, go back to their queue through `rabbitworker.dlq`; a purge asks first;
unknown ids and queues are refused."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from support import eventually, queue_depth
from support.dashboard import board_app, csrf_token, dashboard_client, put_dead_letters

from rabbitworker import App
from rabbitworker.topology import dead_letter_queue_name


def listed(page: str) -> list[str]:
    return re.findall(r'<tr data-id="([^"]+)"', page)


async def test_several_then_all_dead_letters_are_replayed_from_the_page(
    make_app: Callable[..., App], prefix: str, amqp: Any
) -> None:
    app, queue = board_app(make_app, prefix)
    dlq = dead_letter_queue_name(queue)
    with dashboard_client(app) as client:  # connected: the topology is declared
        await put_dead_letters(amqp, queue, *(f"dead-{n}" for n in range(4)))
        page = f"/queues/{quote(queue, safe='')}/dead-letters"
        listing = client.get(page)
        assert listed(listing.text) == [f"dead-{n}" for n in range(4)]
        assert "4 dead letter(s)" in listing.text
        assert "<b>ValueError</b>: job 2 failed" in listing.text
        assert "{\n  &quot;n&quot;: 2\n}" in listing.text  # the body, pretty-printed
        token = csrf_token(listing.text)

        form = {"csrf": token, "scope": "selected", "id": ["dead-1", "dead-3"]}
        several = client.post(f"{page}/replay", data=form)
        assert several.status_code == 303
        assert several.headers["location"].endswith("?replayed=2")
        assert await queue_depth(amqp, queue) == 2
        assert listed(client.get(page).text) == ["dead-0", "dead-2"]

        unknown = client.post(f"{page}/replay", data={"csrf": token, "id": "dead-9"})
        assert unknown.status_code == 400
        assert f"not in {dlq}: dead-9" in unknown.text
        nothing = client.post(f"{page}/replay", data={"csrf": token, "scope": "selected"})
        assert nothing.status_code == 400

        everything = client.post(f"{page}/replay", data={"csrf": token, "scope": "all"})
        assert everything.headers["location"].endswith("?replayed=2")
        assert (await queue_depth(amqp, dlq), await queue_depth(amqp, queue)) == (0, 4)
        done = client.get(everything.headers["location"])
        assert "Replayed 2 message(s)." in done.text
        assert "No dead letters in" in done.text

        # The queues page and its feed count what is where.
        await put_dead_letters(amqp, queue, "dead-x")

        def counted() -> bool:
            [row] = client.get("/api/status").json()["rows"]
            return (row["queue"], row["ready"], row["dead_letters"]) == (queue, 4, 1)

        await eventually(counted, timeout=10)
        queues = client.get("/").text
        assert f'<tr data-queue="{queue}">' in queues
        assert '<td data-key="ready">4</td>' in queues

        assert client.get("/queues/no-such-queue/dead-letters").status_code == 404
        odd = client.get(page, params={"replayed": "<b>x</b>"})
        assert (odd.status_code, "Replayed" in odd.text, "<b>x" in odd.text) == (200, False, False)
        assert (
            client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
        )


async def test_a_purge_asks_for_confirmation_first(
    make_app: Callable[..., App], prefix: str, amqp: Any
) -> None:
    app, queue = board_app(make_app, prefix)
    dlq = dead_letter_queue_name(queue)
    with dashboard_client(app) as client:
        await put_dead_letters(amqp, queue, "a", '<i id="x">b</i>')
        page = f"/queues/{quote(queue, safe='')}/dead-letters"
        listing = client.get(page).text
        token = csrf_token(listing)
        # What the broker holds is shown as text, never as markup.
        assert '<i id="x">' not in listing
        assert "&lt;i id=&quot;x&quot;&gt;b&lt;/i&gt;" in listing
        asked = client.get(f"{page}/purge")
        assert "Delete all 2 dead letter(s)" in asked.text
        unconfirmed = client.post(f"{page}/purge", data={"csrf": token})
        assert unconfirmed.status_code == 200
        assert "Yes, purge 2 dead letter(s)" in unconfirmed.text
        assert await queue_depth(amqp, dlq) == 2
        purged = client.post(f"{page}/purge", data={"csrf": token, "confirm": "yes"})
        assert purged.status_code == 303
        assert purged.headers["location"].endswith("?purged=2")
        assert await queue_depth(amqp, dlq) == 0
        assert "Purged 2 dead letter(s)." in client.get(purged.headers["location"]).text


async def test_the_task_page_without_a_results_store_says_so(
    make_app: Callable[..., App], prefix: str
) -> None:
    app, _ = board_app(make_app, prefix)
    with dashboard_client(app) as client:
        page = client.get("/tasks", params={"id": "some-id"})
        assert page.status_code == 200
        assert "This app has no results store" in page.text
