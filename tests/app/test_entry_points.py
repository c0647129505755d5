"""No exception of the client library reaches a caller: every public entry point,
against a broker that refuses connections, stalls (accepts, never answers) or
vanishes in the middle of the operation, raises a `RabbitWorkerError` within its
timeouts, and every CLI command prints one line and exits 2."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import pytest
from pydantic import BaseModel
from support import eventually
from support.cli import Run, rabbitworker
from support.proxy import Proxy

import rabbitworker as rw
from rabbitworker import App, TaskMessage, Worker, dlq
from rabbitworker.errors import RabbitWorkerError
from rabbitworker.topology import dead_letter_queue_name

Mode = Literal["refuses", "stalls", "vanishes"]
MODES: tuple[Mode, ...] = ("refuses", "stalls", "vanishes")
TIMEOUT = 2.0  # connect_timeout and publish_timeout of every app here
SLACK = 1.0


class Sum(BaseModel):
    value: int


class Add(TaskMessage[Sum], routing_key="entry.add"):
    a: int
    b: int


@dataclass(frozen=True)
class Entry:
    run: Callable[[App, str], Awaitable[Any]]  # (connected app unless `connects`, queue)
    vanishes_during: str  # the AMQP method in flight when the broker vanishes
    connects: bool = False  # opens a connection of its own first
    dead_letter: bool = False  # needs one in the queue's DLQ


async def blocking(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


async def submit_and_wait(app: App) -> Any:
    pending = await app.submit(Add(a=1, b=2))
    return await pending.result(timeout=TIMEOUT)


async def run_worker(app: App, queue: str) -> None:
    await Worker(app).run(handle_signals=False)


async def start_worker(app: App, queue: str) -> None:
    worker = Worker(app)
    try:
        await worker.start()
    finally:
        await worker.shutdown()


async def connect_and_enter(app: App) -> None:
    async with app:
        pass


ENTRIES: dict[str, Entry] = {
    "App.connect": Entry(lambda app, q: app.connect(), "Queue.Declare", connects=True),
    "async with app": Entry(lambda app, q: connect_and_enter(app), "Queue.Bind", connects=True),
    "publish": Entry(lambda app, q: app.publish(Add(a=1, b=2)), "Basic.Publish"),
    "publish with a delay": Entry(
        lambda app, q: app.publish(Add(a=1, b=2), delay=5), "Basic.Publish"
    ),
    "module-level publish": Entry(lambda app, q: rw.publish(Add(a=1, b=2)), "Basic.Publish"),
    "call": Entry(lambda app, q: app.call(Add(a=1, b=2), timeout=TIMEOUT + 1), "Basic.Publish"),
    "call, the reply consumer starting": Entry(
        lambda app, q: app.call(Add(a=1, b=2), timeout=TIMEOUT + 1), "Basic.Consume"
    ),
    "module-level call": Entry(
        lambda app, q: rw.call(Add(a=1, b=2), timeout=TIMEOUT + 1), "Basic.Publish"
    ),
    "submit and result": Entry(lambda app, q: submit_and_wait(app), "Basic.Publish"),
    "sync.publish": Entry(
        lambda app, q: blocking(lambda: app.sync.publish(Add(a=1, b=2))),
        "Basic.Publish", connects=True,
    ),
    "sync.call": Entry(
        lambda app, q: blocking(lambda: app.sync.call(Add(a=1, b=2), timeout=TIMEOUT + 1)),
        "Basic.Publish", connects=True,
    ),
    "sync.submit and result": Entry(
        lambda app, q: blocking(lambda: app.sync.submit(Add(a=1, b=2)).result(timeout=TIMEOUT)),
        "Basic.Publish", connects=True,
    ),
    "Worker.run": Entry(run_worker, "Basic.Consume", connects=True),
    "Worker.start": Entry(start_worker, "Basic.Consume", connects=True),
    "dlq.list_dead_letters": Entry(lambda app, q: dlq.list_dead_letters(app, q), "Basic.Get"),
    "dlq.replay": Entry(
        lambda app, q: dlq.replay(app, q, everything=True), "Basic.Publish", dead_letter=True
    ),
    "dlq.purge": Entry(lambda app, q: dlq.purge(app, q), "Queue.Purge"),
    "dlq.purge by id": Entry(lambda app, q: dlq.purge(app, q, ids=["dead-1"]), "Basic.Get",
                             dead_letter=True),
}  # fmt: skip


async def under(mode: Mode, proxy: Proxy, entry: Entry, operation: Awaitable[Any]) -> Any:
    """Await `operation` with the broker behind `proxy` failing as `mode` says."""
    if mode == "refuses":
        proxy.cut(down="refuse")
        return await operation
    if mode == "stalls":
        if entry.connects:
            proxy.cut(down="stall")  # no connection yet: the new one hangs
        else:
            proxy.hold()  # the live connection stops answering
        return await operation
    proxy.hold(on=entry.vanishes_during)
    task = asyncio.ensure_future(operation)
    await eventually(lambda: proxy.held > 0 or task.done(), timeout=15)
    assert proxy.held, f"{entry.vanishes_during} was never sent: {task}"
    proxy.cut(down="refuse")
    return await task


async def seed_dead_letter(broker_url: str, queue: str) -> None:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        message = aio_pika.Message(b'{"a": 1, "b": 2}', message_id="dead-1", type="entry.add")
        await channel.default_exchange.publish(message, routing_key=dead_letter_queue_name(queue))


def make(make_app: Callable[..., App], proxy: Proxy, broker_url: str, queue: str) -> App:
    app = make_app(connect_timeout=TIMEOUT, publish_timeout=TIMEOUT)
    app.configure(url=proxy.url(broker_url))

    @app.task(queue=queue)
    async def add(msg: Add) -> Sum:
        return Sum(value=msg.a + msg.b)

    return app


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ENTRIES)
async def test_an_entry_point_raises_only_rabbitworker_errors_when_the_broker_fails(
    name: str, mode: Mode, proxy: Proxy, make_app: Any, broker_url: str, prefix: str
) -> None:
    entry, queue = ENTRIES[name], f"{prefix}.q"
    app = make(make_app, proxy, broker_url, queue)
    if not entry.connects:
        await app.__aenter__()  # the module-level functions act on the entered app
    if entry.dead_letter:
        await seed_dead_letter(broker_url, queue)
    started = time.monotonic()
    try:
        with pytest.raises(RabbitWorkerError) as raised:
            await under(mode, proxy, entry, entry.run(app, queue))
    finally:
        took = time.monotonic() - started
        if not entry.connects:
            await app.__aexit__(None, None, None)
    print(f"\n{name} / {mode}: {took:.2f} s, {type(raised.value).__name__}: {raised.value}")
    assert "\n" not in str(raised.value)
    assert took < TIMEOUT + SLACK, f"{type(raised.value).__name__} after {took:.2f} s"


# -- the command line ---------------------------------------------------------

CLI: dict[str, tuple[list[str], str]] = {  # arguments ({q}: the app's queue), method
    "publish": (["publish", "math.note", '{"n": 1}'], "Basic.Publish"),
    "publish --delay": (["publish", "math.note", '{"n": 1}', "--delay", "5"], "Basic.Publish"),
    "call": (["call", "math.add", '{"a": 1, "b": 2}', "--timeout", "30"], "Basic.Publish"),
    "run": (["run"], "Basic.Consume"),
    "dlq list": (["dlq", "list", "--queue", "{q}"], "Basic.Get"),
    "dlq replay": (["dlq", "replay", "--queue", "{q}", "--all"], "Basic.Get"),
    "dlq purge": (["dlq", "purge", "--queue", "{q}", "--yes"], "Queue.Purge"),
    "status": (["status"], "Queue.Declare"),
}


async def command_under(mode: Mode, proxy: Proxy, method: str, args: list[str], env: Any) -> Run:
    if mode != "vanishes":
        proxy.cut(down="refuse" if mode == "refuses" else "stall")
        return await asyncio.to_thread(rabbitworker, *args, env=env)
    proxy.hold(on=method)
    running = asyncio.ensure_future(asyncio.to_thread(rabbitworker, *args, env=env))
    await eventually(lambda: proxy.held > 0 or running.done(), timeout=30)
    assert proxy.held, f"{method} was never sent:\n{running.result().output}"
    proxy.cut(down="refuse")
    return await running


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("command", CLI)
async def test_a_command_prints_one_line_and_exits_2_when_the_broker_fails(
    command: str, mode: Mode, proxy: Proxy, app_module: Any, broker_url: str, prefix: str
) -> None:
    app_module("rpc_math")  # deletes what the command declared, afterwards
    args, method = CLI[command]
    args = [a.replace("{q}", f"{prefix}.rpc") for a in args] + ["--app", "rpc_math:app"]
    env = {
        "RW_TEST_PREFIX": prefix,
        "RABBITWORKER_URL": proxy.url(broker_url),
        "RABBITWORKER_CONNECT_TIMEOUT": f"{TIMEOUT:g}",
        "RABBITWORKER_PUBLISH_TIMEOUT": f"{TIMEOUT:g}",
    }

    run = await command_under(mode, proxy, method, args, env)

    line = run.error_line()
    print(f"\n{command} / {mode}: {run.seconds:.2f} s, {line}")
    assert "cannot connect" in line or "broker" in line or "connection" in line, line
    assert run.seconds < TIMEOUT + 3 * SLACK + 2, f"{line} after {run.seconds:.2f} s"


@pytest.mark.parametrize("mode", MODES)
async def test_topology_needs_no_broker_at_all(
    mode: Mode, proxy: Proxy, broker_url: str, prefix: str
) -> None:
    env = {"RW_TEST_PREFIX": prefix, "RABBITWORKER_URL": proxy.url(broker_url)}
    proxy.cut(down="refuse" if mode == "refuses" else "stall")

    run = await asyncio.to_thread(rabbitworker, "topology", "--app", "rpc_math:app", env=env)

    assert run.code == 0, run.output
    assert f"{prefix}.rpc" in run.stdout
