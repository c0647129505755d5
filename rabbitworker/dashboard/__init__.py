"""`rabbitworker dashboard`: a small web app (Starlette, served by uvicorn; the
optional extra `rabbitworker[dashboard]`) to watch an app's queues, act on its dead
letters, look up a task and see its schedules. Its data comes from
`rabbitworker.status`, its actions go through `rabbitworker.dlq`, the same code as the
command line's."""

from __future__ import annotations

from .security import Credentials, is_loopback, parse_auth
from .server import create_dashboard

__all__ = ["Credentials", "create_dashboard", "is_loopback", "parse_auth"]
