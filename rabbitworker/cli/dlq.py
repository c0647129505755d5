"""`rabbitworker dlq list|replay|purge`: the dead-letter queue from the command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .. import dlq
from .common import AppOpt, JsonOpt, QueueOpt, UrlOpt, fail, friendly, get_app, run_async

__all__ = ["dlq_cli"]

dlq_cli = typer.Typer(
    help="Inspect, replay and purge dead letters.", no_args_is_help=True, rich_markup_mode=None
)

IdsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--id", metavar="MESSAGE_ID", help="a message id (repeat for several)", show_default=False
    ),
]


@dlq_cli.command("list")
@friendly
def dlq_list(
    queue: QueueOpt,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    limit: Annotated[int, typer.Option(metavar="N", min=1, help="show at most this many")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters: id, type, attempts, error, failed at."""
    app = get_app(app_path, url)
    letters = run_async(app, lambda: dlq.list_dead_letters(app, queue, limit=limit))
    if as_json:
        typer.echo(dlq.to_json(letters))
        return
    if not letters:
        typer.echo(f"no dead letters in {queue}.dlq")
        return
    rows = [("MESSAGE ID", "TYPE", "ATTEMPTS", "FAILED AT", "ERROR")]
    rows += [
        (d.message_id, d.type, str(d.attempts), d.failed_at, f"{d.error_type}: {d.error_message}")
        for d in letters
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True))
        typer.echo(f"{cells}  {r[4][:80]}")


@dlq_cli.command("replay")
@friendly
def dlq_replay(
    queue: QueueOpt,
    ids: IdsOpt = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send dead letters back to their queue with the attempt count reset."""
    if not ids and not replay_all:
        fail("name the dead letters to replay with --id, or pass --all")
    app = get_app(app_path, url)
    replayed = run_async(app, lambda: dlq.replay(app, queue, ids=ids or (), everything=replay_all))
    if as_json:
        typer.echo(json.dumps({"replayed": len(replayed), "ids": replayed}))
    else:
        typer.echo(f"replayed {len(replayed)} message(s) to {queue}")


@dlq_cli.command("purge")
@friendly
def dlq_purge(
    queue: QueueOpt,
    ids: IdsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm the deletion")] = False,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good (all of them unless --id is given)."""
    if not yes:
        fail("purge deletes messages for good: pass --yes to confirm")
    app = get_app(app_path, url)
    count = run_async(app, lambda: dlq.purge(app, queue, ids=ids or ()))
    if as_json:
        typer.echo(json.dumps({"purged": count}))
    else:
        typer.echo(f"purged {count} message(s) from {queue}.dlq")
