"""`rabbitworker dlq list / replay / purge`, run as the operator would: a real
worker dead-letters a message, the CLI lists it, replays it to a fixed handler,
and purges what is left."""

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
from conftest import APPS, eventually, queue_depth, read_record

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
