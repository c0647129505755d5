"""What is waiting where: for each work queue of an app, its ready and unacked
counts, consumers, and the depth of its retry queues, crash-suspect queue and
dead-letter queue. `rabbitworker status` and the dashboard both read it from here.

Plain AMQP (a passive declare per queue) gives ready messages and consumers; the
unacked count and the publish/deliver rates need the management API
(`management_url`), and are None without it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .management import ManagementQueue, fetch_queues
from .topology import QueueSpec, dead_letter_queue_name, suspect_queue_name

if TYPE_CHECKING:
    from .app import App

__all__ = ["QueueStatus", "gather_status", "status_json", "status_table"]


@dataclass(frozen=True)
class QueueStatus:
    """One work queue and its parts, as counted now.

    `ready`, `consumers` are None when the queue does not exist (yet); `unacked`,
    `publish_rate` and `deliver_rate` (messages per second) only come from the
    management API. `retry_queues` maps each retry queue to its depth.
    """

    queue: str
    ready: int | None
    unacked: int | None
    consumers: int | None
    retrying: int
    retry_queues: dict[str, int]
    suspects: int
    dead_letters: int
    publish_rate: float | None = None
    deliver_rate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def gather_status(app: App, *, management_url: str | None = None) -> list[QueueStatus]:
    """The status of every work queue of the connected `app`, sorted by name.

    Raises `BrokerError` kinds when the broker does not answer, and
    `ConfigurationError` / `BrokerError` from the management API when one is given.
    """
    specs = app.topology().queues
    names = [spec.name for spec in specs]
    depths = await asyncio.gather(*(_depth(app, name) for name in names))
    counted = dict(zip(names, depths, strict=True))
    managed: dict[str, ManagementQueue] = {}
    if management_url is not None:
        managed = await fetch_queues(management_url, app.settings.url, app.queues)
    return [_row(queue, specs, counted, managed) for queue in sorted(app.queues)]


async def _depth(app: App, name: str) -> tuple[int, int] | None:
    info = await app.transport.inspect(name)
    return None if info is None else (info.messages, info.consumers)


def _row(
    queue: str,
    specs: tuple[QueueSpec, ...],
    counted: dict[str, tuple[int, int] | None],
    managed: dict[str, ManagementQueue],
) -> QueueStatus:
    def ready(name: str) -> int:
        found = counted.get(name)
        return 0 if found is None else found[0]

    retries = {
        s.name: ready(s.name)
        for s in specs
        if s.role == "retry" and s.name.startswith(f"{queue}.retry.")
    }
    own = counted.get(queue)
    more = managed.get(queue)
    return QueueStatus(
        queue=queue,
        ready=None if own is None else own[0],
        unacked=None if more is None else more.unacked,
        consumers=None if own is None else own[1],
        retrying=sum(retries.values()),
        retry_queues=retries,
        suspects=ready(suspect_queue_name(queue)),
        dead_letters=ready(dead_letter_queue_name(queue)),
        publish_rate=None if more is None else more.publish_rate,
        deliver_rate=None if more is None else more.deliver_rate,
    )


def _cell(value: int | float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


_COLUMNS = ("QUEUE", "READY", "UNACKED", "CONSUMERS", "RETRYING", "SUSPECTS", "DLQ")
_RATES = ("PUBLISH/S", "DELIVER/S")


def status_table(rows: list[QueueStatus], *, rates: bool = False) -> str:
    """The rows as an aligned text table; `-` where a count is not known."""
    header = _COLUMNS + (_RATES if rates else ())
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        cells = (r.ready, r.unacked, r.consumers, r.retrying, r.suspects, r.dead_letters)
        more = (r.publish_rate, r.deliver_rate) if rates else ()
        lines.append((r.queue, *(_cell(c) for c in (*cells, *more))))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        first = line[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True))
        out.append("  ".join((first, *rest)).rstrip())
    return "\n".join(out)


def status_json(rows: list[QueueStatus]) -> str:
    return json.dumps([r.as_dict() for r in rows], indent=2)
