"""`rabbitworker dlq list / replay / purge`, run as the operator would: a real
worker dead-letters a message, the CLI lists it, replays it to a fixed handler,
and purges what is left."""

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from support import APPS, eventually, get_all, queue_depth, read_record

from rabbitworker._amqp.headers import WireProperties
from rabbitworker.topology import dead_letter_queue_name

sys.path.insert(0, str(APPS))

from failures_support import CliResult, app_module, run_cli


async def test_an_operator_lists_replays_and_purges_dead_letters_with_the_cli(
    broker_url: str, prefix: str, tmp_path: Path, worker_process: Any, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"

    async def cli(*args: str) -> CliResult:
        return await run_cli(
            "dlq", *args, "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip

    async def dead_letters(n: int) -> bool:
        return await queue_depth(amqp, dead_letter_queue_name(queue)) == n

    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        queue = m.name("jobs")
        worker = worker_process("--app", "failures_cli:app")
        async with m.app:
            message_id = await m.app.publish(m.Job(n=5))
        await eventually(lambda: dead_letters(1), timeout=20)

        # list: a readable table ...
        table = await cli("list")
        assert table.code == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split()[:5] == ["MESSAGE", "ID", "TYPE", "ATTEMPTS", "FAILED"]
        assert row.split()[:3] == [message_id, m.name("job"), "3"]
        assert row.endswith("ValueError: job 5 is broken")
        # ... or JSON for scripts; listing leaves the dead letter where it is.
        listed = await cli("list", "--json")
        assert listed.code == 0, listed.stderr
        [letter] = json.loads(listed.stdout)
        assert letter["message_id"] == message_id
        assert letter["attempts"] == 3
        assert letter["error_type"] == "ValueError"
        assert letter["error_message"] == "job 5 is broken"
        assert letter["original_queue"] == queue
        assert json.loads(letter["body"]) == {"n": 5}
        assert datetime.fromisoformat(letter["failed_at"]).tzinfo is not None
        assert await dead_letters(1)

        # replay: the handler is fixed, the message goes back and is processed afresh.
        Path(f"{record}.fixed").touch()
        replayed = await cli("replay", "--id", message_id)
        assert replayed.code == 0, replayed.stderr
        assert replayed.stdout.strip() == f"replayed 1 message(s) to {queue}"
        await eventually(lambda: any(line[0] == "done" for line in read_record(tmp_path)))
        [done] = [line for line in read_record(tmp_path) if line[0] == "done"]
        assert done[1:] == ["5", message_id, "1"]  # same id, attempt count reset
        assert await dead_letters(0)

        # purge: refuses without --yes (one line, exit code 2), deletes with it.
        channel = await amqp.channel()
        for bad in ("first", "second"):
            raw = aio_pika.Message(b"{not json", message_id=bad, type=m.name("job"))
            await channel.default_exchange.publish(raw, queue)
        await channel.close()
        await eventually(lambda: dead_letters(2))
        refused = await cli("purge")
        assert refused.code == 2
        assert refused.stderr.strip().count("\n") == 0
        assert "--yes" in refused.stderr
        assert await dead_letters(2)
        one = await cli("purge", "--id", "first", "--yes", "--json")
        assert one.code == 0, one.stderr
        assert json.loads(one.stdout) == {"purged": 1}
        [left] = json.loads((await cli("list", "--json")).stdout)
        assert left["message_id"] == "second"
        assert left["error_type"] == "DecodeError"
        rest = await cli("purge", "--yes")
        assert rest.code == 0, rest.stderr
        assert rest.stdout.strip() == f"purged 1 message(s) from {queue}.dlq"
        assert await dead_letters(0)
        assert (await cli("list")).stdout.strip() == f"no dead letters in {queue}.dlq"
        assert worker.stop() == 0


async def test_replaying_without_naming_dead_letters_or_all_is_one_line_and_exit_code_2(
    broker_url: str, prefix: str, tmp_path: Path
) -> None:
    result = await run_cli(
        "dlq", "replay", "--app", "failures_cli:app", "--queue", f"{prefix}.jobs",
        broker_url=broker_url, prefix=prefix, record=tmp_path / "handled.txt",
    )  # fmt: skip
    assert result.code == 2
    assert result.stdout == ""
    assert (
        result.stderr.strip() == "error: name the dead letters to replay with --id, or pass --all"
    )


async def test_replay_all_sends_every_dead_letter_back_to_its_queue(
    broker_url: str, prefix: str, tmp_path: Path, worker_process: Any, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        queue = m.name("jobs")
        worker = worker_process("--app", "failures_cli:app")
        async with m.app:
            ids = {await m.app.publish(m.Job(n=n)) for n in range(3)}

        async def dead_letters(n: int) -> bool:
            return await queue_depth(amqp, dead_letter_queue_name(queue)) == n

        await eventually(lambda: dead_letters(3), timeout=20)
        limited = await run_cli(
            "dlq", "list", "--limit", "2", "--json", "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip
        assert len(json.loads(limited.stdout)) == 2
        Path(f"{record}.fixed").touch()
        result = await run_cli(
            "dlq", "replay", "--all", "--json", "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        replayed = json.loads(result.stdout)
        assert replayed["replayed"] == 3
        assert set(replayed["ids"]) == ids

        def all_done() -> bool:
            return {line[2] for line in read_record(tmp_path) if line[0] == "done"} == ids

        await eventually(all_done)
        assert await dead_letters(0)
        assert worker.stop() == 0


async def test_the_dead_letters_of_a_queue_the_app_does_not_have_are_one_line_and_exit_code_2(
    broker_url: str, prefix: str, tmp_path: Path
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        result = await run_cli(
            "dlq", "list", "--app", "failures_cli:app", "--queue", "nope",
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip
        assert result.code == 2
        assert result.stderr.strip() == (
            f"error: unknown queue 'nope'; app 'failures-cli' has: {m.name('jobs')}"
        )


# -- what `dlq` refuses, and dead letters it did not write ----------------------------


async def forge_dead_letter(
    amqp: Any, queue: str, message_id: str, *, body: bytes = b'{"n": 1}', **headers: Any
) -> None:
    """Put a message straight into `queue`'s dead-letter queue, as any client could."""
    channel = await amqp.channel()
    message = aio_pika.Message(body, message_id=message_id, headers=headers or None)
    await channel.default_exchange.publish(message, dead_letter_queue_name(queue))
    await channel.close()


async def test_replaying_ids_that_are_not_there_names_them_exits_2_and_replays_nothing(
    broker_url: str, prefix: str, tmp_path: Path, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        queue = m.name("jobs")
        async with m.app:  # declares the queues
            pass
        await forge_dead_letter(amqp, queue, "here")
        await eventually(lambda: dead_letters_are(amqp, queue, 1))

        result = await run_cli(
            "dlq", "replay", "--id", "here", "--id", "nope", "--id", "gone",
            "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip

        assert result.code == 2
        assert result.stdout == ""
        assert result.stderr == f"error: not in {queue}.dlq: gone, nope\n"
        assert await dead_letters_are(amqp, queue, 1)
        assert await queue_depth(amqp, queue) == 0


async def dead_letters_are(amqp: Any, queue: str, n: int) -> bool:
    return await queue_depth(amqp, dead_letter_queue_name(queue)) == n


async def test_a_dead_letter_is_replayed_to_the_queue_of_its_dead_letter_queue_whatever_it_claims(
    broker_url: str, prefix: str, tmp_path: Path, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        channel = await amqp.channel()
        victim = await channel.declare_queue(f"{prefix}.victim", auto_delete=True)
        try:
            await replay_a_forged_dead_letter(amqp, broker_url, prefix, record, m, victim.name)
        finally:
            await victim.delete()  # never consumed, so auto-delete would not remove it
            await channel.close()


async def replay_a_forged_dead_letter(
    amqp: Any, broker_url: str, prefix: str, record: Path, m: Any, victim: str
) -> None:
    queue = m.name("jobs")
    async with m.app:
        pass
    # A producer can write any x-original-queue header; replay must not follow it.
    forged: dict[str, Any] = {"x-original-queue": victim, "x-error-type": "Forged"}
    await forge_dead_letter(amqp, queue, "forged", **forged)
    await eventually(lambda: dead_letters_are(amqp, queue, 1))

    result = await run_cli(
        "dlq", "replay", "--id", "forged", "--app", "failures_cli:app", "--queue", queue,
        broker_url=broker_url, prefix=prefix, record=record,
    )  # fmt: skip

    assert (result.code, result.stderr) == (0, "")
    assert result.stdout.strip() == f"replayed 1 message(s) to {queue}"
    [replayed] = await get_all(amqp, queue)
    assert replayed.message_id == "forged"
    headers = replayed.headers or {}
    assert "x-original-queue" not in headers and "x-error-type" not in headers
    assert (headers["x-attempt"], headers["x-replayed"]) == (1, True)
    assert await queue_depth(amqp, victim) == 0
    assert await dead_letters_are(amqp, queue, 0)


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["list", "--json"],
        ["replay", "--all"],
        ["replay", "--id", "x"],
        ["purge", "--yes"],
        ["purge", "--id", "x", "--yes"],
    ],
    ids=" ".join,
)
async def test_dlq_commands_on_a_queue_the_app_does_not_have_are_one_line_and_exit_code_2(
    broker_url: str, prefix: str, tmp_path: Path, command: list[str]
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        result = await run_cli(
            "dlq", *command, "--app", "failures_cli:app", "--queue", "typo",
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip

    assert (result.code, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: unknown queue 'typo'; app 'failures-cli' has: {m.name('jobs')}\n"
    )


async def test_purging_an_id_that_is_not_there_names_it_exits_2_and_purges_nothing(
    broker_url: str, prefix: str, tmp_path: Path, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"
    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        queue = m.name("jobs")
        async with m.app:
            pass
        await forge_dead_letter(amqp, queue, "here")
        await eventually(lambda: dead_letters_are(amqp, queue, 1))

        result = await run_cli(
            "dlq", "purge", "--id", "here", "--id", "nope", "--yes",
            "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip

        assert (result.code, result.stdout) == (2, "")
        assert result.stderr == f"error: not in {queue}.dlq: nope\n"
        assert await dead_letters_are(amqp, queue, 1)


async def test_a_dead_letter_the_broker_wrote_is_listed_from_its_x_death_and_replayed_without_it(
    broker_url: str, prefix: str, tmp_path: Path, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"

    async def cli(*args: str) -> CliResult:
        return await run_cli(
            "dlq", *args, "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip

    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        queue = m.name("jobs")
        async with m.app:
            message_id = await m.app.publish(m.Job(n=4))
        # A consumer that is not rabbitworker rejects it: the broker dead-letters it
        # through the queue's own dead-letter exchange, with x-death and nothing else.
        channel = await amqp.channel()
        work = await channel.get_queue(queue)
        rejected = await work.get(timeout=10)
        before = datetime.now(UTC).replace(microsecond=0)
        await rejected.reject(requeue=False)
        await eventually(lambda: dead_letters_are(amqp, queue, 1))
        await channel.close()

        listed = await cli("list", "--json")
        assert (listed.code, listed.stderr) == (0, "")
        [letter] = json.loads(listed.stdout)
        assert letter["message_id"] == message_id
        assert letter["type"] == m.name("job")
        assert letter["attempts"] == 1
        assert letter["error_type"] == "broker:rejected"
        assert letter["error_message"] == "dead-lettered by the broker (rejected)"
        assert letter["original_queue"] == queue
        assert json.loads(letter["body"]) == {"n": 4}
        failed_at = datetime.fromisoformat(letter["failed_at"])
        assert before - timedelta(seconds=5) <= failed_at <= datetime.now(UTC)

        table = await cli("list")
        assert (table.code, table.stderr) == (0, "")
        row = table.stdout.splitlines()[1]
        assert row.split()[:4] == [message_id, m.name("job"), "1", letter["failed_at"]]
        assert row.endswith("broker:rejected: dead-lettered by the broker (rejected)")

        replayed = await cli("replay", "--all")
        assert (replayed.code, replayed.stderr) == (0, "")
        [again] = await get_all(amqp, queue)
        assert again.message_id == message_id
        assert not [k for k in again.headers or {} if k.startswith(("x-death", "x-first-death"))]
        assert (again.headers or {})["x-replayed"] == 1  # replayed once


async def test_dead_letters_with_names_and_ids_that_are_not_utf_8_are_listed_and_replayed(
    broker_url: str, prefix: str, tmp_path: Path, amqp: Any
) -> None:
    record = tmp_path / "handled.txt"

    async def cli(*args: str) -> CliResult:
        return await run_cli(
            "dlq", *args, "--app", "failures_cli:app", "--queue", queue,
            broker_url=broker_url, prefix=prefix, record=record,
        )  # fmt: skip

    async with app_module("failures_cli", prefix=prefix, record=record, broker_url=broker_url) as m:
        queue = m.name("jobs")
        async with m.app:
            pass
        # Hand-built: a message id, a type and a header name that are not UTF-8, a
        # header value that is not either, and an error message in bytes.
        escaped = b"\xffid".decode("utf-8", "surrogateescape")
        properties = WireProperties(
            message_id=escaped,
            message_type=b"type\xfe".decode("utf-8", "surrogateescape"),
            headers={
                b"name\xff".decode("utf-8", "surrogateescape"): b"\xfe\xff",
                "x-error-type": "ValueError",
                "x-error-message": b"bad \xff input",
            },
        )
        connection = await aiormq.connect(broker_url)
        raw = await connection.channel()
        await raw.confirm_delivery()
        await raw.basic_publish(
            b"\xff not json", routing_key=dead_letter_queue_name(queue), properties=properties
        )
        await connection.close()
        await eventually(lambda: dead_letters_are(amqp, queue, 1))

        listed = await cli("list", "--json")
        assert (listed.code, listed.stderr) == (0, "")
        [letter] = json.loads(listed.stdout)
        assert letter["message_id"] == "\\xffid"
        assert letter["type"] == "type\\xfe"
        assert letter["error_message"] == "bad \ufffd input"
        table = await cli("list")
        assert (table.code, table.stderr) == (0, "")
        assert table.stdout.splitlines()[1].split()[:2] == ["\\xffid", "type\\xfe"]

        # The id as the listing shows it is the id to replay it by.
        replayed = await cli("replay", "--id", "\\xffid")
        assert (replayed.code, replayed.stderr) == (0, "")
        assert replayed.stdout.strip() == f"replayed 1 message(s) to {queue}"
        assert await dead_letters_are(amqp, queue, 0)
        assert await queue_depth(amqp, queue) == 1
