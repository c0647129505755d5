"""The dashboard's ASGI app: routes for the queues, dead letters, task and schedules pages,
a JSON feed the queues page polls, and a monitor that samples `gather_status`
in the background to keep the last minutes for the charts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import dlq
from ..errors import ConfigurationError, RabbitWorkerError
from ..logs import hide_password, mask_secrets
from ..status import QueueStatus, gather_status
from ..topology import dead_letter_queue_name
from . import pages
from .schedules import read_schedules, schedules_page
from .security import CSRF_COOKIE, Credentials, Guard, Security
from .static import SCRIPT, STYLE

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Monitor", "create_dashboard"]

log = logging.getLogger(__name__)
LIST_LIMIT = 100
Point = tuple[float, int | None, float | None]  # time, ready, handled per second


@dataclass
class Monitor:
    """The latest status of every queue and the last `keep_s` seconds of it."""

    app: App
    management_url: str | None
    interval: float
    keep_s: float = 900.0
    rows: list[QueueStatus] = field(default_factory=list)
    history: dict[str, deque[Point]] = field(default_factory=dict)
    error: str = ""
    time: float = 0.0

    async def sample(self) -> None:
        try:
            rows = await gather_status(self.app, management_url=self.management_url)
        except RabbitWorkerError as exc:
            self.error = mask_secrets(str(exc))
            return
        self.rows, self.error, self.time = rows, "", time.time()
        size = max(2, int(self.keep_s / self.interval))
        for row in rows:
            points = self.history.setdefault(row.queue, deque(maxlen=size))
            points.append((self.time, row.ready, row.deliver_rate))

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # a bug must not stop the sampling for good
                self.error = mask_secrets(f"{type(exc).__name__}: {exc}")
                log.exception("dashboard: sampling the queues failed")
            await asyncio.sleep(self.interval)

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "error": self.error,
            "rows": [r.as_dict() for r in self.rows],
            "history": {q: list(points) for q, points in self.history.items()},
        }


@dataclass
class Dashboard:
    app: App
    monitor: Monitor
    security: Security

    def page(
        self, request: Request, title: str, render: Callable[[str], str], status: int = 200
    ) -> HTMLResponse:
        """A page whose forms carry the CSRF token bound to the visitor's cookie."""
        cookie = request.cookies.get(CSRF_COOKIE) or self.security.new_cookie()
        body = pages.layout(
            title,
            render(self.security.token_for(cookie)),
            app_name=self.app.name,
            broker=self.app.transport.description,
            schedules=len(self.app.schedules) > 0,
        )
        response = HTMLResponse(mask_secrets(body), status_code=status)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict")
        return response

    def queue_of(self, request: Request) -> str:
        queue = str(request.path_params["queue"])
        if queue not in self.app.queues:
            raise HTTPException(404, f"app {self.app.name!r} has no queue {queue!r}")
        return queue

    async def queues(self, request: Request) -> Response:
        if not self.monitor.time:
            await self.monitor.sample()
        rates = self.monitor.management_url is not None
        rows, interval = self.monitor.rows, self.monitor.interval
        return self.page(
            request, "Queues", lambda _: pages.queues_page(rows, interval=interval, rates=rates)
        )

    async def api_status(self, request: Request) -> Response:
        return JSONResponse(self.monitor.as_json(), headers={"Cache-Control": "no-store"})

    async def dead_letters(self, request: Request) -> Response:
        queue = self.queue_of(request)
        letters = await dlq.list_dead_letters(self.app, queue, limit=LIST_LIMIT)
        info = await self.app.transport.inspect(dead_letter_queue_name(queue))
        total = len(letters) if info is None else max(info.messages, len(letters))
        note = _note(request)
        return self.page(
            request,
            f"Dead letters of {queue}",
            lambda token: pages.dead_letters_page(
                queue, letters, total=total, token=token, note=note
            ),
        )

    async def replay(self, request: Request) -> Response:
        queue = self.queue_of(request)
        form = await self.security.form(request)
        everything = form.get("scope") == ["all"]
        ids = form.get("id", [])
        if not ids and not everything:
            return self.page(request, "Nothing replayed", lambda _: _nothing_selected(queue), 400)
        replayed = await dlq.replay(self.app, queue, ids=ids, everything=everything)
        await self.monitor.sample()
        return _back(queue, replayed=len(replayed))

    async def purge_form(self, request: Request) -> Response:
        queue = self.queue_of(request)
        info = await self.app.transport.inspect(dead_letter_queue_name(queue))
        count = 0 if info is None else info.messages
        return self.page(
            request, "Purge dead letters", lambda t: pages.purge_page(queue, count, token=t)
        )

    async def purge(self, request: Request) -> Response:
        queue = self.queue_of(request)
        form = await self.security.form(request)
        if form.get("confirm") != ["yes"]:
            return await self.purge_form(request)
        purged = await dlq.purge(self.app, queue)
        await self.monitor.sample()
        return _back(queue, purged=purged)

    async def task(self, request: Request) -> Response:
        message_id = request.query_params.get("id", "").strip()
        store = _has_store(self.app)
        status = await self.app.status(message_id) if store and message_id else None
        return self.page(
            request, "Task", lambda _: pages.task_page(message_id, status, store=store)
        )

    async def schedules(self, request: Request) -> Response:
        board = await read_schedules(self.app)
        return self.page(request, "Schedules", lambda _: schedules_page(board))

    async def failed(self, request: Request, exc: Exception) -> Response:
        code = 400 if isinstance(exc, ConfigurationError) else 503
        text = mask_secrets(str(exc))
        return self.page(request, "Error", lambda _: pages.message_page(text), code)


def _has_store(app: App) -> bool:
    # Without opening the store: whether App(results=...) or the settings name one.
    return app._results_store is not None or app.settings.results is not None


def _nothing_selected(queue: str) -> str:
    return pages.message_page(f"Select the dead letters of {queue} to replay, or replay all.")


def _note(request: Request) -> str:
    replayed, purged = (request.query_params.get(k, "") for k in ("replayed", "purged"))
    if replayed.isdigit():
        return f"Replayed {int(replayed)} message(s)."
    if purged.isdigit():
        return f"Purged {int(purged)} dead letter(s)."
    return ""


def _back(queue: str, **counts: int) -> Response:
    query = "&".join(f"{k}={v}" for k, v in counts.items())
    return RedirectResponse(f"/queues/{quote(queue, safe='')}/dead-letters?{query}", 303)


def _asset(text: str, media_type: str) -> Callable[[Request], Any]:
    async def serve(request: Request) -> Response:
        return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})

    return serve


def create_dashboard(
    app: App,
    *,
    credentials: Credentials | None = None,
    management_url: str | None = None,
    interval: float = 2.0,
) -> Starlette:
    """The dashboard for `app`, which it connects on startup and closes on shutdown."""
    for url in (app.settings.url, management_url):
        if url:
            hide_password(url)  # masked in every page and error from now on
    monitor = Monitor(app, management_url, interval)
    security = Security(credentials)
    board = Dashboard(app, monitor, security)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with app:
            sampler = asyncio.create_task(monitor.run())
            try:
                yield
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

    base = "/queues/{queue}/dead-letters"
    routes = [
        Route("/", board.queues),
        Route("/api/status", board.api_status),
        Route(base, board.dead_letters),
        Route(f"{base}/replay", board.replay, methods=["POST"]),
        Route(f"{base}/purge", board.purge_form, methods=["GET"]),
        Route(f"{base}/purge", board.purge, methods=["POST"]),
        Route("/tasks", board.task),
        Route("/schedules", board.schedules),
        Route("/static/style.css", _asset(STYLE, "text/css")),
        Route("/static/dashboard.js", _asset(SCRIPT, "text/javascript")),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, security=security)],
        exception_handlers={RabbitWorkerError: board.failed},
        lifespan=lifespan,
    )
