"""The two brokers tests/testing/test_behaviour.py runs on: RabbitMQ (with a worker in this
process) and rabbitworker.testing's TestBroker, behind one small interface."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from rabbitworker import App
from rabbitworker.testing import TestBroker
from rabbitworker.topology import quantize_delay_ms
from rabbitworker.transport import Delivery
from rabbitworker.worker import Worker, lifecycle
from support import delete_topology, eventually, remember_app_delays, remember_delay

__all__ = ["MemoryRig", "RabbitRig", "Rig"]

Predicate = Callable[[], bool | Awaitable[bool]]


class Rig:
    """What a behaviour test needs of a broker: an app on unique names, the app
    running (with or without a worker), a way to let things happen, and a clock."""

    kind = ""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.apps: list[App] = []
        self.extra_queues: list[str] = []  # declared by the test itself, deleted at the end

    def q(self, name: str) -> str:
        """A queue name unique to this test."""
        return f"{self.prefix}.{name}"

    def app(self, **options: Any) -> App:
        options.setdefault("exchange", f"{self.prefix}.x")
        app = App("behaviour", **self._options(), **options)
        self.apps.append(app)
        return app

    def _options(self) -> dict[str, Any]:
        return {}

    def seconds(self, virtual: float) -> float:
        """A delay for this broker: as given on virtual time, far shorter on RabbitMQ."""
        return virtual

    def clock(self) -> float:
        raise NotImplementedError

    def running(
        self, app: App, *, worker: bool = True
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def settle(self, until: Predicate) -> None:
        """Let the broker and the worker work until `until` holds (or fail)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Remove what the test declared."""

    async def crash(self, app: App) -> None:
        """Act out the worker's process dying, and a new one starting."""
        raise NotImplementedError

    async def depth(self, app: App, queue: str) -> int:
        info = await app.transport.inspect(queue)
        return 0 if info is None else info.messages

    async def holds(self, app: App, queue: str, count: int) -> bool:
        """Whether `queue` has `count` messages ready."""
        return await self.depth(app, queue) == count

    async def take(self, app: App, queue: str) -> list[Delivery]:
        """The messages in `queue` (they go back when read)."""
        async with app.transport.browse(queue) as browser:
            return await browser.take()


class RabbitRig(Rig):
    kind = "rabbitmq"
    _worker: tuple[Worker, asyncio.Task[None]]

    def __init__(self, prefix: str, url: str) -> None:
        super().__init__(prefix)
        self.url = url

    def _options(self) -> dict[str, Any]:
        return {"url": self.url}

    def seconds(self, virtual: float) -> float:
        real = virtual / 200
        remember_delay(quantize_delay_ms(real))
        return real

    def clock(self) -> float:
        return time.monotonic()

    @contextlib.asynccontextmanager
    async def running(self, app: App, *, worker: bool = True) -> AsyncIterator[None]:
        async with app:
            if not worker:
                yield
                return
            await self._start(app)
            try:
                yield
            finally:
                await self._stop()

    async def _start(self, app: App) -> None:
        w = Worker(app, grace=0.5)
        task = asyncio.create_task(w.run(handle_signals=False))
        self._worker = (w, task)
        await eventually(lambda: w.stats().consuming or task.done(), timeout=15)
        if task.done():
            task.result()

    async def _stop(self) -> None:
        w, task = self._worker
        w.stop()
        await asyncio.wait_for(task, 30)

    async def crash(self, app: App) -> None:
        """The worker's connection drops with its handlers mid-way; a new one starts.

        The old worker is then stopped in this process; its consumer cancels, on a
        connection already closed, would each wait out the shutdown's 5 s bound."""
        await app.session.transport.close()
        saved, lifecycle.CANCEL_TIMEOUT_S = lifecycle.CANCEL_TIMEOUT_S, 0.05
        try:
            await self._stop()
        finally:
            lifecycle.CANCEL_TIMEOUT_S = saved
        await self._start(app)

    async def settle(self, until: Predicate) -> None:
        await eventually(until, timeout=15)

    async def close(self) -> None:
        for app in self.apps:
            await app.close()
            remember_app_delays(app)
            await delete_topology(self.url, app.exchange, app.queues + self.extra_queues)


class MemoryRig(Rig):
    kind = "memory"
    broker: TestBroker | None = None

    def clock(self) -> float:
        assert self.broker is not None
        return self.broker.now

    @contextlib.asynccontextmanager
    async def running(self, app: App, *, worker: bool = True) -> AsyncIterator[None]:
        async with TestBroker(app, worker=worker) as broker:
            self.broker = broker
            yield

    async def crash(self, app: App) -> None:
        assert self.broker is not None
        await self.broker.crash_worker()

    async def settle(self, until: Predicate) -> None:
        assert self.broker is not None
        await self.broker.join()
        holds = until()
        if not isinstance(holds, bool):
            holds = await holds
        assert holds, "not so once the test broker was idle"
