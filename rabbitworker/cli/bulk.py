"""`rabbitworker publish --file rows.jsonl`: many messages from a JSON Lines file,
every row validated before the first is sent, then published with `publish_many`.

A row is one JSON object: ``{"routing_key": "emails.welcome", "body": {...}}``
(the body as `rabbitworker publish` takes it). Blank lines are skipped. Each
confirmed message prints ``<line> <message id>`` on stdout; each failed one
``line <line>: <error type>: <message>`` on stderr; a summary ends stderr.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from ..app import App
from ..message import TaskMessage
from .common import fail

__all__ = ["publish_file"]


def _rows(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; read lazily, any length."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, line


def _message(app: App, number: int, line: str) -> TaskMessage[Any]:
    """The message a row describes, or exit 2 naming the line."""
    try:
        row = json.loads(line)
    except ValueError as exc:
        fail(f"line {number}: not JSON: {exc}")
    if not isinstance(row, dict) or set(row) != {"routing_key", "body"}:
        fail(f'line {number}: a row is {{"routing_key": "...", "body": {{...}}}}')
    key = row["routing_key"]
    message_type = app.registry.message_types.get(key) if isinstance(key, str) else None
    if message_type is None:
        known = ", ".join(sorted(app.registry.message_types))
        fail(f"line {number}: no message type with routing key {key!r}; known: {known}")
    try:
        return message_type.model_validate(row["body"])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        fail(f"line {number}: invalid {message_type.__name__}: {where}: {first['msg']}")


async def publish_file(app: App, path: Path, *, window: int, delay: float | None) -> None:
    """Validate every row of `path`, then publish them all; exit 1 if any failed."""
    rows = 0
    for number, line in _rows(path):
        _message(app, number, line)
        rows += 1
    numbers: deque[int] = deque()  # line numbers of the messages in flight, oldest first

    def messages() -> Iterator[TaskMessage[Any]]:
        for number, line in _rows(path):
            numbers.append(number)
            yield _message(app, number, line)

    failed = 0
    async with app:
        async for result in app.publish_many(messages(), window=window, delay=delay):
            number = numbers.popleft()
            if result.ok:
                typer.echo(f"{number} {result.message_id}")
            else:
                failed += 1
                error = result.error
                typer.echo(f"line {number}: {type(error).__name__}: {error}", err=True)
    typer.echo(f"published {rows - failed} of {rows} messages; {failed} failed", err=True)
    if failed:
        raise typer.Exit(1)
