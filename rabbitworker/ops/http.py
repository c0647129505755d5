"""The tiny HTTP server behind `--metrics-port` and `--health-port`: the standard
library's threading server, one per port, answering GET on a fixed set of paths.
A thread of its own keeps a scrape or a probe off the worker's event loop (and
lets `/healthz` tell whether that loop still answers)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import ConfigurationError

__all__ = ["Response", "Route", "Server", "serve"]

log = logging.getLogger("rabbitworker.ops")

Response = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Response]


class Server:
    """HTTP servers on one or more ports; `close()` stops them all."""

    def __init__(self, servers: list[ThreadingHTTPServer]) -> None:
        self.servers = servers

    @property
    def ports(self) -> list[int]:
        return [s.server_address[1] for s in self.servers]

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def _handler(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            try:
                status, ctype, body = route() if route else (404, "text/plain", b"not found\n")
            except Exception as exc:
                log.exception("%s failed", self.path)
                status, ctype, body = 500, "text/plain", f"{type(exc).__name__}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds are not news

    return Handler


def serve(host: str, ports: Iterable[tuple[int, dict[str, Route]]]) -> Server:
    """Serve `routes` on each port (routes of the same port are merged); returns
    once every port listens. Raises `ConfigurationError` for a port in use."""
    merged: dict[int, dict[str, Route]] = {}
    for port, routes in ports:
        merged.setdefault(port, {}).update(routes)
    servers: list[ThreadingHTTPServer] = []
    try:
        for port, routes in merged.items():
            server = ThreadingHTTPServer((host, port), _handler(routes))
            server.daemon_threads = True
            servers.append(server)
    except BaseException as exc:
        for server in servers:
            server.server_close()
        if isinstance(exc, OSError):
            raise ConfigurationError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc}"
            ) from None
        raise
    for server in servers:
        name = f"rabbitworker-http-{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return Server(servers)
