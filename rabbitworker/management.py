"""RabbitMQ's management HTTP API, for what plain AMQP cannot tell: a queue's
unacknowledged count and its publish and deliver rates. Optional: the broker needs
the `rabbitmq_management` plugin. Standard library only (urllib, in a thread)."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .errors import ConfigurationError, ConnectionFailed
from .urls import mask_url, parse_broker_url

__all__ = ["ManagementQueue", "ManagementTarget", "fetch_queues", "management_target"]

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ManagementQueue:
    """What the management API adds about one queue."""

    name: str
    ready: int
    unacked: int
    consumers: int
    publish_rate: float | None
    deliver_rate: float | None


@dataclass(frozen=True)
class ManagementTarget:
    base: str  # scheme://host:port/path, no credentials
    authorization: str = field(repr=False)
    vhost: str = "/"


def management_target(management_url: str, broker_url: str) -> ManagementTarget:
    """Where to ask and as whom: the credentials of `management_url`, or else the
    broker URL's; the vhost of the broker URL. Raises `ConfigurationError`."""
    parts = urlsplit(management_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"--management-url must be http(s)://host:port/, got {mask_url(management_url)!r}"
        )
    broker = parse_broker_url(broker_url)
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
    else:
        user, password = broker.username or "guest", broker.password or "guest"
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:
        netloc = f"[{parts.hostname}]" + ("" if parts.port is None else f":{parts.port}")
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return ManagementTarget(base, f"Basic {token}", broker.vhost)


async def fetch_queues(
    management_url: str, broker_url: str, queues: list[str]
) -> dict[str, ManagementQueue]:
    """The management API's view of `queues` (those that exist), by name.

    Raises `ConfigurationError` for a bad URL or refused login, `ConnectionFailed`
    when the API does not answer.
    """
    target = management_target(management_url, broker_url)
    found = await asyncio.gather(*(asyncio.to_thread(_fetch, target, q) for q in queues))
    return {q.name: q for q in found if q is not None}


def _fetch(target: ManagementTarget, queue: str) -> ManagementQueue | None:
    url = f"{target.base}/api/queues/{quote(target.vhost, safe='')}/{quote(queue, safe='')}"
    request = urllib.request.Request(url, headers={"Authorization": target.authorization})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        if exc.code in (401, 403):
            raise ConfigurationError(
                f"the management API at {target.base} refused the login ({exc.code})"
            ) from None
        raise ConnectionFailed(f"the management API at {target.base} answered {exc.code}") from None
    except (OSError, ValueError) as exc:
        raise ConnectionFailed(
            f"the management API at {target.base} did not answer: {exc}"
        ) from None
    return _queue(queue, data)


def _rate(stats: dict[str, Any], key: str) -> float | None:
    details = stats.get(f"{key}_details")
    return float(details["rate"]) if isinstance(details, dict) and "rate" in details else None


def _queue(name: str, data: dict[str, Any]) -> ManagementQueue:
    stats = data.get("message_stats") or {}
    return ManagementQueue(
        name=name,
        ready=int(data.get("messages_ready") or 0),
        unacked=int(data.get("messages_unacknowledged") or 0),
        consumers=int(data.get("consumers") or 0),
        publish_rate=_rate(stats, "publish") or 0.0,
        deliver_rate=_rate(stats, "deliver_get") or 0.0,
    )
