"""The command line, thin: each command parses its options, builds the app and
calls into the package. Every expected failure prints one line and exits 2."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ..__about__ import __version__
from .beat import beat, schedules
from .dashboard import dashboard
from .dlq import dlq_cli
from .produce import call_cmd, publish_cmd, topology
from .result import result
from .run import run
from .status import status

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="rabbitworker",
    help="Typed background work over RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cli.command()(run)
cli.command()(topology)
cli.command("publish")(publish_cmd)
cli.command("call")(call_cmd)
cli.command()(result)
cli.command()(beat)
cli.command()(schedules)
cli.command()(status)
cli.command()(dashboard)
cli.add_typer(dlq_cli, name="dlq")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rabbitworker {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """Typed background work over RabbitMQ."""


def main() -> None:
    logging.captureWarnings(True)
    cli()
