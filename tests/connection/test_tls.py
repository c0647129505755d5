"""`amqps://` URLs with TLS options in the query: a loopback TLS terminator in front
of the broker (with a throwaway self-signed certificate, and client certificates
required) shows that cafile, certfile and keyfile reach the TLS handshake."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support import eventually, unavailable

from rabbitworker import App, Context, TaskMessage
from rabbitworker.errors import ConnectionFailed


@dataclass
class TlsBroker:
    port: int
    cert: Path
    key: Path

    def url(self, query: str) -> str:
        return f"amqps://guest:guest@127.0.0.1:{self.port}/?{query}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture
async def tls_broker(broker_url: str, tmp_path: Path) -> AsyncIterator[TlsBroker]:
    """TLS on 127.0.0.1:<port>, forwarded in plain AMQP to the test broker."""
    if shutil.which("openssl") is None:
        unavailable("needs openssl to make a throwaway certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cert)
    context.verify_mode = ssl.CERT_REQUIRED  # the client must present its certificate
    target = urlsplit(broker_url)
    pipes: set[asyncio.Task[None]] = set()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                target.hostname, target.port or 5672
            )
        except OSError:
            writer.close()
            return
        for task in (_pipe(reader, up_writer), _pipe(up_reader, writer)):
            pipe = asyncio.create_task(task)
            pipes.add(pipe)
            pipe.add_done_callback(pipes.discard)

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    yield TlsBroker(port, cert, key)
    server.close()
    for pipe in list(pipes):
        pipe.cancel()
    await asyncio.gather(*pipes, return_exceptions=True)
    await server.wait_closed()


async def test_an_amqps_url_with_tls_options_publishes_and_consumes(
    tls_broker: TlsBroker, make_app: Any, start_worker: Any, prefix: str
) -> None:
    app: App = make_app()
    b = tls_broker
    app.configure(url=b.url(f"cafile={b.cert}&certfile={b.cert}&keyfile={b.key}"))
    handled: list[int] = []

    class Secure(TaskMessage, routing_key=f"{prefix}.secure"):
        n: int

    @app.task(queue=f"{prefix}.secure")
    async def secure(msg: Secure, ctx: Context) -> None:
        handled.append(msg.n)

    worker = await start_worker(app)
    await app.publish(Secure(n=42))
    await eventually(lambda: handled == [42])
    await eventually(lambda: worker.stats().handled == 1)  # counted once its ack is settled


async def test_an_amqps_url_without_the_ca_refuses_the_unknown_certificate(
    tls_broker: TlsBroker, make_app: Any, prefix: str
) -> None:
    app: App = make_app(connect_timeout=1)
    b = tls_broker
    app.configure(url=b.url(f"certfile={b.cert}&keyfile={b.key}"))

    class Secure(TaskMessage, routing_key=f"{prefix}.secure"):
        n: int

    @app.task(queue=f"{prefix}.secure")
    async def secure(msg: Secure) -> None: ...

    with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED") as raised:
        await app.connect()
    assert "guest:***@" in str(raised.value)
