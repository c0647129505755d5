"""A loopback TCP proxy between a client and the broker that tests can cut and
restore, so connection loss is tested without touching the shared broker.

From async code::

    async with Proxy("127.0.0.1", 5672) as proxy:
        url = proxy.url(broker_url)      # the broker URL, pointed at the proxy
        ...
        proxy.cut()                      # drop every live connection
        proxy.cut(down="refuse")         # ...and refuse new ones until restore()
        await proxy.restore()

From a script, `python tests/proxy.py --target 127.0.0.1:5672` prints the port it
listens on and cuts every connection on SIGUSR1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Proxy"]

DownMode = Literal["refuse", "stall"]
_CHUNK = 256 * 1024


class Proxy:
    """Forwards connections on 127.0.0.1:`port` (0: a free one) to `target`.

    `cut()` drops every live connection at once. While down, new connections are
    either refused (the listening socket is closed, as with a stopped broker) or
    stalled (accepted and never answered, as with a broker that hangs).
    """

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.cuts = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._down: DownMode | None = None
        self._live: set[asyncio.Task[None]] = set()
        self._stalled: set[asyncio.StreamWriter] = set()

    @classmethod
    def to(cls, url: str) -> Proxy:
        """A proxy in front of the broker of `url`."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5672)

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def connections(self) -> int:
        """Client connections being forwarded now."""
        return len(self._live)

    @property
    def is_down(self) -> bool:
        return self._down is not None

    async def start(self) -> None:
        # reuse_address: the port of a refusing proxy is listened on again at once.
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._close_listener()
        self._drop_all()
        self._drop_stalled()
        if self._live:
            await asyncio.wait(set(self._live), timeout=5)

    def cut(self, *, down: DownMode | None = None) -> int:
        """Drop every live connection; returns how many were dropped.

        With `down`, stay down until `restore()`: "refuse" closes the listening
        socket, "stall" accepts connections but forwards nothing. Without it, a
        proxy that is down stays down.
        """
        self.cuts += 1
        dropped = len(self._live)
        if down is not None:
            self._down = down
        if down == "refuse" and self._server is not None:
            server, self._server = self._server, None
            server.close()
        self._drop_all()
        return dropped

    async def restore(self) -> None:
        """Accept and forward connections again."""
        self._down = None
        self._drop_stalled()
        if self._server is None:
            await self.start()

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1)

    def _drop_all(self) -> None:
        for task in list(self._live):
            task.cancel()

    def _drop_stalled(self) -> None:
        for writer in self._stalled:
            writer.transport.abort()
        self._stalled.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down == "refuse":
            writer.transport.abort()
            return
        if self._down == "stall":
            self._stalled.add(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self.accepted += 1
        self._live.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self.target)
            pumps = [
                asyncio.ensure_future(_pump(reader, upstream)),
                asyncio.ensure_future(_pump(up_reader, writer)),
            ]
            try:
                # Either side closing ends the whole connection.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            self._live.discard(task)
            # abort(), not close(): a cut must look like a dead link, not a polite FIN.
            writer.transport.abort()
            if upstream is not None:
                upstream.transport.abort()

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()


async def _serve(target: str, port: int) -> None:
    host, _, target_port = target.rpartition(":")
    proxy = Proxy(host or "127.0.0.1", int(target_port), port=port)
    await proxy.start()
    print(proxy.port, flush=True)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, proxy.cut)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:5672", help="broker host:port")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    args = parser.parse_args()
    asyncio.run(_serve(args.target, args.port))
