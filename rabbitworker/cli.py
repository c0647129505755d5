"""The command line: parse, build the app, call into the package. Every expected
failure prints one line and exits 2."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from .__about__ import __version__
from .app import App, load_app
from .errors import RabbitWorkerError, RemoteError
from .logs import hide_password, mask_secrets, setup_logging
from .message import encode_reply

T = TypeVar("T")

cli = typer.Typer(
    name="rabbitworker",
    help="Typed background work over RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
dlq_cli = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")

AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app", help="module:attribute of the App (or RABBITWORKER_APP)", show_default=False
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="broker URL (or RABBITWORKER_URL)", show_default=False),
]
QueueOpt = Annotated[
    str, typer.Option("--queue", "-q", help="the work queue whose dead letters to use")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {mask_secrets(message)}", err=True)
    raise typer.Exit(2)


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn rabbitworker errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RabbitWorkerError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def get_app(app_path: str | None, url: str | None, **settings: Any) -> App:
    for given in (url, os.environ.get("RABBITWORKER_URL")):
        if given:
            hide_password(given)  # before anything can fail and print it
    path = app_path or os.environ.get("RABBITWORKER_APP")
    if not path:
        fail("no app given: pass --app module:attribute or set RABBITWORKER_APP")
    app = load_app(path)
    app.configure(url=url, **settings)
    # Validated now, so a bad value is one clear line; warnings from any command
    # then go through the password filter too (`run` sets its own level later).
    setup_logging("WARNING", app.settings.url)
    return app


def run_async(app: App, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        async with app:
            return await coro()

    return asyncio.run(main())


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rabbitworker {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="print the version"
        ),
    ] = False,
) -> None:
    """Typed background work over RabbitMQ."""


@cli.command()
@friendly
def run(
    app_path: AppOpt = None,
    queues: Annotated[
        str | None,
        typer.Option("--queues", help="comma-separated queues (default: all of the app's)"),
    ] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="handlers running at once")] = None,
    prefetch: Annotated[
        int | None, typer.Option(min=1, max=65535, help="unacked deliveries per queue")
    ] = None,
    url: UrlOpt = None,
    processes: Annotated[int, typer.Option(min=1, help="worker processes under a supervisor")] = 1,
    grace: Annotated[
        float | None, typer.Option(min=0, help="seconds in-flight work may finish on SIGTERM")
    ] = None,
    connect_timeout: Annotated[
        float | None, typer.Option(min=0.1, help="seconds to keep trying to connect")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR")] = "INFO",
) -> None:
    """Run a worker on the app's queues."""
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        fail(f"unknown --log-level {log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    app = get_app(app_path, url, connect_timeout=connect_timeout, grace=grace)
    setup_logging(level, app.settings.url)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    from .supervisor import Supervisor, ready_notifier
    from .worker import Worker

    # Built before any process starts: a bad queue name or setting is one line, once.
    worker = Worker(app, queues=names, concurrency=concurrency, prefetch=prefetch)
    if processes > 1:
        code = Supervisor(processes, child_argv=sys.argv[1:], grace=app.settings.grace).run()
        raise typer.Exit(code)
    asyncio.run(worker.run(on_ready=ready_notifier()))
    code = 130 if worker.forced else 0
    if worker.abandoned_threads or worker.forced:
        # A sync handler's thread cannot be stopped, and the interpreter would wait
        # for it at exit; its message is already back with the broker.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


@cli.command()
@friendly
def topology(app_path: AppOpt = None) -> None:
    """Print the exchanges, queues and bindings the app declares."""
    typer.echo(get_app(app_path, None).topology().describe())


def _validate(app: App, routing_key: str, payload: str) -> Any:
    message_type = app.message_types.get(routing_key)
    if message_type is None:
        known = ", ".join(sorted(app.message_types))
        fail(f"no message type with routing key {routing_key!r}; known: {known}")
    try:
        return message_type.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        fail(f"invalid {message_type.__name__}: {where}: {first['msg']}")


@cli.command("publish")
@friendly
def publish_cmd(
    routing_key: Annotated[str, typer.Argument(help="the message type's routing key")],
    payload: Annotated[str, typer.Argument(help="the message as JSON")],
    app_path: AppOpt = None,
    url: UrlOpt = None,
    delay: Annotated[
        float | None, typer.Option(min=0, help="deliver no earlier than this many seconds")
    ] = None,
) -> None:
    """Publish one message and print its id once the broker confirmed it."""
    app = get_app(app_path, url)
    msg = _validate(app, routing_key, payload)
    typer.echo(run_async(app, lambda: app.publish(msg, delay=delay)))


@cli.command("call")
@friendly
def call_cmd(
    routing_key: Annotated[str, typer.Argument(help="the message type's routing key")],
    payload: Annotated[str, typer.Argument(help="the message as JSON")],
    app_path: AppOpt = None,
    url: UrlOpt = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="seconds to wait for the reply")] = 30.0,
) -> None:
    """Call an RPC task and print its reply as JSON."""
    app = get_app(app_path, url)
    msg = _validate(app, routing_key, payload)
    try:
        reply = run_async(app, lambda: app.call(msg, timeout=timeout))
    except RemoteError as exc:
        fail(f"the handler raised {exc.remote_type}: {exc.remote_message}")
    typer.echo(encode_reply(reply).decode())


@dlq_cli.command("list")
@friendly
def dlq_list(
    queue: QueueOpt,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="show at most this many")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters: id, type, attempts, error, failed at."""
    from .dlq import list_dead_letters, to_json

    app = get_app(app_path, url)
    letters = run_async(app, lambda: list_dead_letters(app, queue, limit=limit))
    if as_json:
        typer.echo(to_json(letters))
        return
    if not letters:
        typer.echo(f"no dead letters in {queue}.dlq")
        return
    rows = [("MESSAGE ID", "TYPE", "ATTEMPTS", "FAILED AT", "ERROR")]
    rows += [
        (
            d.message_id,
            d.type,
            str(d.attempts),
            d.failed_at,
            f"{d.error_type}: {d.error_message}"[:80],
        )
        for d in letters
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])


@dlq_cli.command("replay")
@friendly
def dlq_replay(
    queue: QueueOpt,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="message id to replay (repeatable)")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send dead letters back to their queue with the attempt count reset."""
    from .dlq import replay

    if not ids and not replay_all:
        fail("name the dead letters to replay with --id, or pass --all")
    app = get_app(app_path, url)
    count = run_async(app, lambda: replay(app, queue, ids=ids or (), everything=replay_all))
    typer.echo(
        json.dumps({"replayed": count}) if as_json else f"replayed {count} message(s) to {queue}"
    )


@dlq_cli.command("purge")
@friendly
def dlq_purge(
    queue: QueueOpt,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="message id to delete (repeatable)")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm the deletion")] = False,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete dead letters for good (all of them unless --id is given)."""
    from .dlq import purge

    if not yes:
        fail("purge deletes messages for good: pass --yes to confirm")
    app = get_app(app_path, url)
    count = run_async(app, lambda: purge(app, queue, ids=ids or ()))
    typer.echo(
        json.dumps({"purged": count}) if as_json else f"purged {count} message(s) from {queue}.dlq"
    )


def main() -> None:
    logging.captureWarnings(True)
    cli()
