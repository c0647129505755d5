"""examples/web_node against a real worker: the FastAPI endpoints driven through
httpx's ASGI transport (with the app's lifespan run by hand, as the transport does
not), and the sync producer script run as a user would."""

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support import ROOT, delete_topology, eventually, remember_app_delays

EXAMPLE = ROOT / "examples" / "web_node"
MODULES = ("tasks", "web")


@pytest.fixture
def example_env(broker_url: str, prefix: str) -> dict[str, str]:
    return {
        "RABBITWORKER_URL": broker_url,
        "WEB_NODE_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)]),
    }


@pytest.fixture
async def web(
    example_env: dict[str, str], broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """The example's web module, imported afresh with this test's prefix."""
    for key in ("RABBITWORKER_URL", "WEB_NODE_PREFIX"):
        monkeypatch.setenv(key, example_env[key])
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for mod in MODULES:
        sys.modules.pop(mod, None)
    import web  # type: ignore[import-not-found]

    yield web
    app = web.app
    remember_app_delays(app)
    await delete_topology(broker_url, app.exchange, app.queues)
    for mod in MODULES:
        sys.modules.pop(mod, None)


@pytest.fixture
def worker(worker_process: Any, example_env: dict[str, str]) -> Any:
    proc = worker_process("--app", "tasks:app", env=example_env)
    proc.wait_consuming()
    return proc


async def test_the_web_node_endpoints_publish_a_task_and_call_an_rpc_task(
    web: Any, worker: Any
) -> None:
    api = web.api
    # ASGITransport sends no lifespan events: enter the lifespan ourselves, as a
    # server would at start-up, so the endpoints find the app connected.
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://web-node") as client:
            placed = await client.post("/orders", json={"order_id": 17})
            assert placed.status_code == 202
            message_id = placed.json()["message_id"]

            quote = await client.get("/quotes/apple", params={"quantity": 3})
            assert quote.status_code == 200
            assert quote.json() == {"sku": "apple", "quantity": 3, "total_cents": 120}

            # Many requests at once share the one connection; each gets its own answer.
            quotes = await asyncio.gather(
                *(client.get("/quotes/plum", params={"quantity": n}) for n in range(1, 51))
            )
            assert [q.json()["total_cents"] for q in quotes] == [25 * n for n in range(1, 51)]

            unknown = await client.get("/quotes/durian")
            assert unknown.status_code == 404
            assert unknown.json() == {"detail": "no product 'durian'"}

            invalid = await client.post("/orders", json={"order_id": "seventeen"})
            assert invalid.status_code == 422

    assert web.app._session is None  # the lifespan closed it
    await eventually(lambda: f"receipt for order 17 sent (message {message_id})" in worker.output)


async def test_the_sync_producer_calls_and_publishes_from_eight_threads(
    web: Any, worker: Any, example_env: dict[str, str]
) -> None:
    # The script blocks this test's loop while it runs, which is fine: the worker is
    # another process, and nothing else runs here meanwhile.
    done = subprocess.run(
        [sys.executable, "sync_producer.py"],
        cwd=EXAMPLE,
        env={**os.environ, **example_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 16
    prices = sys.modules["tasks"].PRICES_CENTS
    message_ids = []
    for order_id, line in enumerate(lines, start=1):
        sku = ("apple", "pear", "plum")[order_id % 3]
        total = prices[sku] * order_id
        assert line.startswith(f"order {order_id}: {order_id} x {sku} = {total} cents ("), line
        message_ids.append((order_id, line.rsplit("(", 1)[1].rstrip(")")))
    await eventually(
        lambda: all(
            f"receipt for order {n} sent (message {mid})" in worker.output for n, mid in message_ids
        )
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _web_node(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "web:api", "--port", str(port), "--log-level", "warning"],
        cwd=EXAMPLE,
        env={**os.environ, **env},
    )


async def test_a_report_requested_on_one_web_node_is_read_on_another(
    web: Any, worker_process: Any, example_env: dict[str, str], redis_url: str
) -> None:
    env = {**example_env, "RABBITWORKER_RESULTS": redis_url}
    worker_process("--app", "tasks:app", env=env).wait_consuming()
    ports = [_free_port(), _free_port()]
    nodes = [_web_node(env, port) for port in ports]
    try:
        async with httpx.AsyncClient() as client:
            first, second = (f"http://127.0.0.1:{port}" for port in ports)

            async def both_up() -> bool:
                try:
                    for base in (first, second):
                        (await client.get(f"{base}/openapi.json")).raise_for_status()
                    return True
                except httpx.HTTPError:
                    return False

            await eventually(both_up, timeout=30)
            accepted = await client.post(f"{first}/reports", json={"report_id": 12})
            assert accepted.status_code == 202
            status_url = accepted.json()["status_url"]
            seen: list[str] = []

            async def ready_on_the_other_node() -> bool:
                answer = await client.get(f"{second}{status_url}")
                assert answer.status_code == 200, answer.text
                seen.append(answer.json()["state"])
                return bool(answer.json()["state"] == "succeeded")

            await eventually(ready_on_the_other_node, timeout=30)
            report = (await client.get(f"{second}{status_url}")).json()
            assert report["result"] == {"url": "/files/report-12.pdf", "pages": 6}
            assert report["message_id"] == accepted.json()["message_id"]
            assert set(seen) <= {"queued", "started", "succeeded"}
            missing = await client.get(f"{second}/reports/no-such-report")
            assert missing.status_code == 404
    finally:
        for node in nodes:
            node.terminate()
            node.wait(timeout=30)
