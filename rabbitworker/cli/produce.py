"""`rabbitworker publish`, `call` and `topology`: messages from the command line,
validated against the app's message types before anything is sent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from ..app import App
from ..bulk import DEFAULT_WINDOW
from ..errors import RemoteError
from ..message import encode_reply
from .bulk import publish_file
from .common import AppOpt, UrlOpt, fail, friendly, get_app, run_async

__all__ = ["call_cmd", "publish_cmd", "topology"]

_KEY = typer.Argument(
    metavar="ROUTING_KEY", help="the message type's routing key", show_default=False
)
_PAYLOAD = typer.Argument(metavar="JSON", help="the message as JSON", show_default=False)
KeyArg = Annotated[str, _KEY]
PayloadArg = Annotated[str, _PAYLOAD]


def validate(app: App, routing_key: str, payload: str) -> Any:
    """The message of type `routing_key` that `payload` (JSON) describes, or exit 2."""
    message_type = app.registry.message_types.get(routing_key)
    if message_type is None:
        known = ", ".join(sorted(app.registry.message_types))
        fail(f"no message type with routing key {routing_key!r}; known: {known}")
    try:
        return message_type.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        fail(f"invalid {message_type.__name__}: {where}: {first['msg']}")


@friendly
def topology(app_path: AppOpt = None) -> None:
    """Print the exchanges, queues and bindings the app declares."""
    typer.echo(get_app(app_path, None).topology().describe())


FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        exists=True,
        dir_okay=False,
        help='publish every row of a JSON Lines file: {"routing_key": ..., "body": {...}}',
        show_default=False,
    ),
]
WindowOpt = Annotated[
    int, typer.Option(min=1, help="with --file: unconfirmed messages in flight at most")
]


@friendly
def publish_cmd(
    routing_key: Annotated[str | None, _KEY] = None,
    payload: Annotated[str | None, _PAYLOAD] = None,
    file: FileOpt = None,
    window: WindowOpt = DEFAULT_WINDOW,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    delay: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            min=0,
            help="deliver no earlier than this many seconds from now",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Publish one message and print its id once the broker confirmed it; with
    --file, every row of the file, printing each row's line and message id."""
    app = get_app(app_path, url)
    if file is not None:
        if routing_key is not None or payload is not None:
            fail("give either ROUTING_KEY JSON or --file, not both")
        asyncio.run(publish_file(app, file, window=window, delay=delay))
        return
    if routing_key is None or payload is None:
        fail("give ROUTING_KEY and JSON, or --file rows.jsonl")
    msg = validate(app, routing_key, payload)
    typer.echo(run_async(app, lambda: app.publish(msg, delay=delay)))


@friendly
def call_cmd(
    routing_key: KeyArg,
    payload: PayloadArg,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", min=0.001, help="how long to wait for the reply"),
    ] = 30.0,
) -> None:
    """Call an RPC task and print its reply as JSON."""
    app = get_app(app_path, url)
    msg = validate(app, routing_key, payload)
    try:
        reply = run_async(app, lambda: app.call(msg, timeout=timeout))
    except RemoteError as exc:
        fail(f"the handler raised {exc.remote_type}: {exc.remote_message}")
    typer.echo(encode_reply(reply).decode())
