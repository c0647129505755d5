"""The blocking facade (`app.sync`) from plain threads, with no event loop of the
test's own, against a worker subprocess."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import APPS, ROOT, read_record

from rabbitworker import TaskMessage
from rabbitworker.errors import ConnectionFailed, RemoteError, UnroutableError
from rabbitworker.sync import SyncPendingReply

THREADS = 8
PER_THREAD = 25


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """`eventually` for tests without an event loop: poll until a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rabbitworker-sync-client"]


@pytest.fixture
def math_worker(app_module: Any, worker_process: Any) -> Any:
    """tests/apps/rpc_math with a worker subprocess on both of its queues."""
    m = app_module("rpc_math")
    queues = f"{m.name('rpc')},{m.name('notes')}"
    worker_process("--app", "rpc_math:app", "--queues", queues).wait_consuming()
    yield m
    m.app.sync.close()


def test_the_blocking_facade_publishes_and_calls_from_eight_threads_at_once(
    math_worker: Any, tmp_path: Path
) -> None:
    m = math_worker
    facade = m.app.sync
    assert client_threads() == []  # started lazily, on first use
    start = threading.Barrier(THREADS)

    def work(t: int) -> tuple[list[str], list[Any], list[Any]]:
        start.wait()
        published = [facade.publish(m.Note(n=t * 1000 + i)) for i in range(PER_THREAD)]
        replies = [facade.call(m.Add(a=t, b=i), timeout=30) for i in range(PER_THREAD)]
        pendings = [facade.submit(m.Multiply(a=t, b=i)) for i in range(PER_THREAD)]
        assert all(isinstance(p, SyncPendingReply) for p in pendings)
        products = [p.result(timeout=30) for p in pendings]
        return published, replies, products

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS)))

    assert len(client_threads()) == 1  # one connection, shared by all eight threads
    sent: dict[str, int] = {}
    for t, (published, replies, products) in enumerate(results):
        for i in range(PER_THREAD):
            sent[published[i]] = t * 1000 + i
            assert replies[i] == m.AddResult(value=t + i), (t, i)
            assert products[i] == m.AddResult(value=t * i), (t, i)
    assert len(sent) == THREADS * PER_THREAD

    wait_until(lambda: len(read_record(tmp_path)) >= THREADS * PER_THREAD)
    handled = {message_id: int(n) for _, n, message_id in read_record(tmp_path)}
    assert handled == sent

    facade.close()
    assert client_threads() == []


def test_the_blocking_facade_raises_the_errors_of_the_async_api(math_worker: Any) -> None:
    m = math_worker
    facade = m.app.sync
    with pytest.raises(RemoteError) as info:
        facade.call(m.Divide(a=1, b=0), timeout=30)
    assert info.value.remote_type == "ZeroDivisionError"

    class Nowhere(TaskMessage, routing_key="math.nowhere"):
        pass

    with pytest.raises(UnroutableError):
        facade.call(Nowhere(), timeout=30)
    with pytest.raises(UnroutableError):
        facade.publish(Nowhere())
    # Still usable after errors, and again after being closed.
    assert facade.call(m.Add(a=2, b=3), timeout=30) == m.AddResult(value=5)
    facade.close()
    assert client_threads() == []
    assert facade.call(m.Add(a=3, b=3), timeout=30) == m.AddResult(value=6)
    facade.close()
    assert client_threads() == []


def test_closing_the_facade_fails_a_reply_still_awaited_in_another_thread(
    app_module: Any,
) -> None:
    m = app_module("rpc_math")  # no worker: the request waits in its queue unanswered
    facade = m.app.sync
    pending = facade.submit(m.Note(n=1))
    outcome: list[BaseException] = []

    def wait_for_reply() -> None:
        try:
            pending.result(timeout=None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait_for_reply)
    thread.start()
    facade.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionFailed)
    assert client_threads() == []


def test_the_facade_is_closed_at_interpreter_exit(app_module: Any, worker_process: Any) -> None:
    m = app_module("rpc_math")
    worker_process("--app", "rpc_math:app", "--queues", m.name("rpc")).wait_consuming()
    script = textwrap.dedent(
        """
        import atexit
        import threading

        from rpc_math import Add, app

        # Registered before the facade starts, so it runs after the facade's own
        # exit hook (atexit runs hooks last-in, first-out).
        atexit.register(
            lambda: print("client threads at exit:", sum(
                t.name == "rabbitworker-sync-client" for t in threading.enumerate()
            ))
        )
        print(app.sync.call(Add(a=20, b=22), timeout=30).value)
        """
    )
    env = {
        **os.environ,
        "RW_TEST_PREFIX": m.name("x").removesuffix(".x"),
        "RABBITWORKER_URL": m.app.settings.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["42", "client threads at exit: 0"]
    assert done.stderr == ""


def test_a_facade_that_cannot_connect_raises_connection_failed_and_leaves_no_thread(
    app_module: Any,
) -> None:
    m = app_module("rpc_math")
    m.app.configure(url="amqp://guest:secret@127.0.0.1:1/", connect_timeout=0.3)
    with pytest.raises(ConnectionFailed) as info:
        m.app.sync.call(m.Add(a=1, b=2), timeout=5)
    assert "secret" not in str(info.value)
    assert client_threads() == []
