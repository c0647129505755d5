"""A loopback TCP proxy between a client and the broker that tests can cut and
restore, so connection loss is tested without touching the shared broker.

From async code::

    async with Proxy("127.0.0.1", 5672) as proxy:
        url = proxy.url(broker_url)      # the broker URL, pointed at the proxy
        ...
        proxy.cut()                      # drop every live connection
        proxy.cut(down="refuse")         # ...and refuse new ones until restore()
        await proxy.restore()
        proxy.hold()                     # live connections go silent (a hung broker)
        proxy.hold(on="Basic.Publish")   # ...each one as its client sends that method

A held connection forwards nothing either way until `cut()` drops it, so a test can
catch an operation in flight: hold on its method, wait for `proxy.held`, then cut.

From a script, `python tests/support/proxy.py --target 127.0.0.1:5672` prints the port it
listens on and cuts every connection on SIGUSR1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import pamqp.frame

__all__ = ["Proxy"]

DownMode = Literal["refuse", "stall"]
_CHUNK = 256 * 1024
_PROTOCOL_HEADER = 8  # "AMQP" and the protocol version, sent once by the client
_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size; then the payload and 0xCE
_METHOD_FRAME = 1


class _Link:
    """One forwarded connection. Splits what the client sends into AMQP frames, so the
    connection can be held just before a given method reaches the broker."""

    def __init__(self, hold_on: set[str], on_hold: Callable[[], None]) -> None:
        self.held = False
        self._hold_on = hold_on  # the proxy's set: a later hold(on=...) applies here too
        self._on_hold = on_hold
        self._pending = b""
        self._header_seen = False
        self._raw = False  # not AMQP (a Redis, say): forwarded as it comes

    def hold(self) -> None:
        if not self.held:
            self.held = True
            self._on_hold()

    def from_broker(self, data: bytes) -> bytes:
        return b"" if self.held else data

    def from_client(self, data: bytes) -> bytes:
        """The complete frames of `data` that may go on; nothing once held."""
        if self.held:
            return b""
        if self._raw:
            return data
        buffer = self._pending + data
        end = 0
        if not self._header_seen:
            if not b"AMQP".startswith(buffer[:4]):
                self._raw, self._pending = True, b""
                return buffer
            if len(buffer) < _PROTOCOL_HEADER:
                self._pending = buffer
                return b""
            self._header_seen, end = True, _PROTOCOL_HEADER
        while len(buffer) - end >= _FRAME_HEADER.size:
            kind, _, size = _FRAME_HEADER.unpack_from(buffer, end)
            frame_end = end + _FRAME_HEADER.size + size + 1
            if frame_end > len(buffer):
                break
            if kind == _METHOD_FRAME and self._hold_on:
                _, _, frame = pamqp.frame.unmarshal(buffer[end:frame_end])
                if frame.name in self._hold_on:
                    self.hold()
                    self._pending = b""
                    return buffer[:end]
            end = frame_end
        self._pending = buffer[end:]
        return buffer[:end]


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
        self.held = 0  # connections held so far (see hold())
        self._hold_on: set[str] = set()
        self._links: set[_Link] = set()
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

    def hold(self, *, on: str | None = None) -> None:
        """Stop forwarding, either way, on every live connection (a broker that hangs
        mid-session); with `on` (an AMQP method such as "Basic.Publish"), on each
        connection as its client sends that method, which the broker never sees.
        Held connections stay open and silent until `cut()`; `restore()` ends `on`."""
        if on is None:
            for link in self._links:
                link.hold()
        else:
            self._hold_on.add(on)

    def _count_hold(self) -> None:
        self.held += 1

    async def restore(self) -> None:
        """Accept and forward connections again."""
        self._down = None
        self._hold_on.clear()
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
        link = _Link(self._hold_on, self._count_hold)
        self._links.add(link)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self.target)
            pumps = [
                asyncio.ensure_future(_pump(reader, upstream, link.from_client)),
                asyncio.ensure_future(_pump(up_reader, writer, link.from_broker)),
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
            self._links.discard(link)
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


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    passing: Callable[[bytes], bytes],
) -> None:
    while data := await reader.read(_CHUNK):
        if data := passing(data):
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
