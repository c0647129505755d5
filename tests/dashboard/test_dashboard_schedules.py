"""The dashboard's Schedules page on a real broker: it lists each schedule with its
next run times (the rows `rabbitworker schedules` prints), and shows "leader: none",
then "leader: held" while a `rabbitworker beat` process leads, then "none" again once
it stopped; an app without schedules has no Schedules link and a page saying so."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import aio_pika
import httpx
from support import APPS, ROOT, WorkerProcess, eventually
from support.dashboard import (  # noqa: F401  (fixture)
    DashboardProcess,
    board_app,
    dashboard_client,
    start_dashboard,
)

from rabbitworker import App
from rabbitworker.topology import beat_leader_queue_name

LEADER = re.compile(r'data-leader="(\w+)"')


def leader(board: DashboardProcess) -> str:
    page = httpx.get(f"{board.base}/schedules", timeout=10)
    assert page.status_code == 200, page.text
    found = LEADER.search(page.text)
    assert found, page.text
    return found.group(1)


async def logged(beat: WorkerProcess, line: str) -> None:
    try:
        await eventually(lambda: line in beat.output, timeout=20)
    except AssertionError:
        raise AssertionError(f"no {line!r} in 20 s:\n{beat.output}") from None


def row(page: str, name: str) -> str:
    found = re.search(rf'<tr data-schedule="{name}">(.*?)</tr>', page)
    assert found, page
    return found.group(1)


async def test_the_schedules_page_lists_next_runs_and_whether_a_beat_leads(
    start_dashboard: Callable[..., DashboardProcess],  # noqa: F811
    broker_url: str,
    prefix: str,
    tmp_path: Path,
    beat_app_cleanup: None,
) -> None:
    board = start_dashboard("--app", "beat_app:app")
    page = httpx.get(f"{board.base}/schedules", timeout=10).text
    assert '<a href="/schedules">Schedules</a>' in httpx.get(board.base, timeout=10).text
    nightly = row(page, "nightly-report")
    assert "NightlyReport" in nightly and f"<code>{prefix}.report</code>" in nightly
    assert "cron <code>0 2 * * *</code>" in nightly and "Europe/Paris" in nightly
    runs = [datetime.fromisoformat(t) for t in re.findall(r"<time>([^<]+)</time>", nightly)]
    print(f"\nnightly-report next runs: {[t.isoformat() for t in runs]}")
    assert len(runs) == 3 and [t.hour for t in runs] == [2, 2, 2]
    assert [(b - a).days for a, b in itertools.pairwise(runs)] == [1, 1]
    assert "every 1 s" in row(page, "tick") and "none kept yet" in row(page, "tick")
    assert f"<code>{beat_leader_queue_name(prefix + '.x')}</code>" in page
    assert leader(board) == "none"

    env = {
        **os.environ,
        "RABBITWORKER_URL": broker_url,
        "RW_TEST_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
    }
    beat = WorkerProcess(["beat", "--app", "beat_app:app"], env, tmp_path / "beat.log")
    try:
        await logged(beat, "beat: leading")
        assert leader(board) == "held"
        await logged(beat, "beat: published")  # a tick, and so a last tick kept
        page = httpx.get(f"{board.base}/schedules", timeout=10).text
        assert "kept on the broker" in row(page, "tick")
        assert "none kept yet" in row(page, "nightly-report")
    finally:
        beat.stop()
    await eventually(lambda: leader(board) == "none", timeout=10)
    assert "beat: published" in beat.output  # it led, and its lock went with it


async def test_an_app_without_schedules_has_no_schedules_link(
    make_app: Callable[..., App], prefix: str
) -> None:
    app, _ = board_app(make_app, prefix)
    with dashboard_client(app) as client:
        assert "/schedules" not in client.get("/").text
        page = client.get("/schedules")
        assert page.status_code == 200
        assert "This app has no schedules" in page.text


async def test_probing_the_lock_tells_held_from_free_without_taking_it(
    make_app: Callable[..., App], prefix: str, amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    """RabbitMQ answers a passive declare of another connection's exclusive queue with
    RESOURCE_LOCKED, and of a missing one with NOT_FOUND: held, then free."""
    app = make_app()
    name = f"{prefix}.lock"
    async with app:
        probe = app.transport.probe_lock
        assert await probe(name) == "free"
        channel = await amqp.channel()
        await channel.declare_queue(name, exclusive=True)
        assert await probe(name) == "held"
        assert await probe(name) == "held"  # asking did not take it, nor close the app
        await channel.close()  # an exclusive queue outlives its channel, not its connection
        assert await probe(name) == "held"
        cleanup = await amqp.channel()
        await cleanup.queue_delete(name)
        assert await probe(name) == "free"
        assert await app.transport.inspect(name) is None  # the app's connection is fine
