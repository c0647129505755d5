"""An app with schedules, for the beat tests run as subprocesses: a tick every
second (RW_TEST_EVERY) into its own queue, and a nightly cron job."""

from __future__ import annotations

import os
from datetime import timedelta

from recording import name, record

from rabbitworker import App, Context, Deduplicate, TaskMessage

app = App("beat", exchange=name("x"), middleware=[Deduplicate()])


class Tick(TaskMessage, routing_key=name("tick")):
    pass


class NightlyReport(TaskMessage, routing_key=name("report")):
    pass


@app.task(queue=name("ticks"))
async def handle_tick(msg: Tick, ctx: Context) -> None:
    record("tick", ctx.message_id, os.getpid())


@app.task(queue=name("reports"))
async def handle_report(msg: NightlyReport) -> None:
    pass


every = float(os.environ.get("RW_TEST_EVERY", "1"))
app.schedule(Tick(), every=timedelta(seconds=every), name="tick")
app.schedule(NightlyReport(), cron="0 2 * * *", tz="Europe/Paris", name="nightly-report")
