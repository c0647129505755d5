"""`call(timeout=t)` and `submit(...).result(timeout=t)` return or raise within
t + 0.5 s: as the first call of an app (the reply consumer still to start), from the
blocking client's first use (the connection still to open), with no worker to
answer, and with a broker that stalls or refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel
from support.proxy import Proxy

import rabbitworker as rw
from rabbitworker import App, TaskMessage
from rabbitworker.errors import RabbitWorkerError, RPCTimeout

BOUND_S = 0.5
# Far longer than any t here: a bound met comes from t, not from these.
OTHER_TIMEOUTS_S = 20.0


class Sum(BaseModel):
    value: int


class Add(TaskMessage[Sum], routing_key="bounds.add"):
    a: int
    b: int


def add() -> Add:
    return Add(a=1, b=2)


async def stall(proxy: Proxy) -> None:
    proxy.hold()


async def refuse(proxy: Proxy) -> None:
    proxy.cut(down="refuse")


async def stall_new_connections(proxy: Proxy) -> None:
    proxy.cut(down="stall")


async def healthy(proxy: Proxy) -> None:
    pass


class Clock:
    """When the bounded wait started: at the operation's start unless it says."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()


Operation = Callable[[App, Proxy, float, Clock], Awaitable[Any]]


async def submitted_then_stall(app: App, proxy: Proxy, t: float, clock: Clock) -> Any:
    pending = await app.submit(add())
    proxy.hold()
    clock.start()
    return await pending.result(timeout=t)


async def submitted_then_result(app: App, proxy: Proxy, t: float, clock: Clock) -> Any:
    pending = await app.submit(add())
    clock.start()
    return await pending.result(timeout=t)


async def later_call(app: App, proxy: Proxy, t: float, clock: Clock) -> Any:
    await app.submit(add())  # starts the reply consumer
    proxy.hold()
    clock.start()
    return await app.call(add(), timeout=t)


def blocking(fn: Callable[[App, float, Clock], Any]) -> Operation:
    async def run(app: App, proxy: Proxy, t: float, clock: Clock) -> Any:
        return await asyncio.to_thread(fn, app, t, clock)

    return run


def sync_submitted_then_result(app: App, t: float, clock: Clock) -> Any:
    pending = app.sync.submit(add())  # the first use: connects
    clock.start()
    return pending.result(timeout=t)


@dataclass(frozen=True)
class Scenario:
    broker: Callable[[Proxy], Awaitable[None]]  # done to the broker just before
    operation: Operation
    connected: bool = True  # the async app is connected first


SCENARIOS: dict[str, Scenario] = {
    "the first call of an app, no worker": Scenario(
        healthy, lambda app, p, t, c: app.call(add(), timeout=t)
    ),
    "the first call of an app, the broker stalled": Scenario(
        stall, lambda app, p, t, c: app.call(add(), timeout=t)
    ),
    "the first call of an app, the broker refusing": Scenario(
        refuse, lambda app, p, t, c: app.call(add(), timeout=t)
    ),
    "a later call, the broker stalled": Scenario(healthy, later_call),
    "the first module-level call, no worker": Scenario(
        healthy, lambda app, p, t, c: rw.call(add(), timeout=t)
    ),
    "submit and result, no worker": Scenario(healthy, submitted_then_result),
    "submit and result, the broker stalling after the submit": Scenario(
        healthy, submitted_then_stall
    ),
    "the blocking client's first call, no worker": Scenario(
        healthy, blocking(lambda app, t, c: app.sync.call(add(), timeout=t)), connected=False
    ),
    "the blocking client's first call, the broker stalled": Scenario(
        stall_new_connections,
        blocking(lambda app, t, c: app.sync.call(add(), timeout=t)),
        connected=False,
    ),
    "the blocking client's submit and result, no worker": Scenario(
        healthy, blocking(sync_submitted_then_result), connected=False
    ),
}


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    """Collects how long each wait took; printed at the end (visible with -s)."""
    taken: dict[str, float] = {}
    yield taken
    print()
    for name, seconds in sorted(taken.items()):
        print(f"  {seconds:5.2f} s  {name}")


@pytest.mark.parametrize("t", [0.3, 1.0])
@pytest.mark.parametrize("name", SCENARIOS)
async def test_a_wait_for_a_reply_ends_within_its_timeout_and_half_a_second(
    name: str,
    t: float,
    proxy: Proxy,
    make_app: Any,
    broker_url: str,
    prefix: str,
    timings: dict[str, float],
) -> None:
    scenario = SCENARIOS[name]
    app: App = make_app(connect_timeout=OTHER_TIMEOUTS_S, publish_timeout=OTHER_TIMEOUTS_S)
    app.configure(url=proxy.url(broker_url))

    @app.task(queue=f"{prefix}.q")
    async def nobody_runs_this(msg: Add) -> Sum:
        raise AssertionError("no worker runs in this test")

    if scenario.connected:
        await app.__aenter__()
    try:
        await scenario.broker(proxy)
        clock = Clock()
        with pytest.raises(RabbitWorkerError) as raised:
            await scenario.operation(app, proxy, t, clock)
        took = time.monotonic() - clock.started
    finally:
        proxy.cut()  # a held connection would make closing wait
        if scenario.connected:
            await app.__aexit__(None, None, None)
    timings[f"t={t:g}  {name}: {type(raised.value).__name__}"] = took
    assert took <= t + BOUND_S, f"{raised.value!r} after {took:.2f} s"
    assert isinstance(raised.value, RPCTimeout), repr(raised.value)
    assert took >= t * 0.95
