"""The dashboard's dead-letter actions over HTTP, as the page's forms send them:
several selected dead letters, then all of them, go back to their queue through
`rabbitworker.dlq`; unknown ids and queues are refused."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aio_pika
import httpx
from conftest import queue_depth
from dashboard_support import start_dashboard  # noqa: F401  (fixture)

from rabbitworker.topology import dead_letter_queue_name


async def test_several_then_all_dead_letters_are_replayed_from_the_page(
    app_module: Any,
    start_dashboard: Any,  # noqa: F811
    amqp: Any,
) -> None:
    m = app_module("ops_console")
    queue = m.name("jobs")
    async with m.app:
        pass  # declares the topology
    channel = await amqp.channel()
    for n in range(4):
        body = f'{{"n": {n}}}'.encode()
        message = aio_pika.Message(body, message_id=f"dead-{n}", type=m.name("job"))
        await channel.default_exchange.publish(message, dead_letter_queue_name(queue))
    await channel.close()
    board = start_dashboard("--app", "ops_console:app")
    page = f"{board.base}/queues/{quote(queue, safe='')}/dead-letters"
    async with httpx.AsyncClient() as client:
        listing = await client.get(page)
        assert re.findall(r'data-id="(dead-\d)"', listing.text) == [f"dead-{n}" for n in range(4)]
        assert "4 dead letter(s)" in listing.text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', listing.text)
        assert found
        token = found.group(1)

        several = await client.post(
            f"{page}/replay", data={"csrf": token, "scope": "selected", "id": ["dead-1", "dead-3"]}
        )
        assert several.status_code == 303
        assert several.headers["location"].endswith("?replayed=2")
        assert await queue_depth(amqp, queue) == 2
        after = await client.get(page)
        assert re.findall(r'data-id="(dead-\d)"', after.text) == ["dead-0", "dead-2"]

        unknown = await client.post(f"{page}/replay", data={"csrf": token, "id": "dead-9"})
        assert unknown.status_code == 400
        assert "dead-9" in unknown.text
        nothing = await client.post(f"{page}/replay", data={"csrf": token, "scope": "selected"})
        assert nothing.status_code == 400

        everything = await client.post(f"{page}/replay", data={"csrf": token, "scope": "all"})
        assert everything.headers["location"].endswith("?replayed=2")
        assert await queue_depth(amqp, dead_letter_queue_name(queue)) == 0
        assert await queue_depth(amqp, queue) == 4
        done = await client.get(page, params={"replayed": "2"})
        assert "Replayed 2 message(s)." in done.text

        missing = await client.get(f"{board.base}/queues/no-such-queue/dead-letters")
        assert missing.status_code == 404
