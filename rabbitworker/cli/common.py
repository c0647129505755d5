"""What every command shares: loading the app, one-line errors with exit code 2,
running a coroutine on a connected app, and the common options."""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from typer.exceptions import TyperException

from ..app import App
from ..errors import ConfigurationError, RabbitWorkerError
from ..logs import hide_password, mask_secrets, setup_logging
from ..settings import Settings
from ..urls import parse_broker_url

__all__ = [
    "AppOpt",
    "JsonOpt",
    "QueueOpt",
    "UrlOpt",
    "fail",
    "friendly",
    "get_app",
    "load_app",
    "run_async",
]

T = TypeVar("T")

AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="MODULE:APP",
        help="module:attribute of the App [env: RABBITWORKER_APP]",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="broker URL [env: RABBITWORKER_URL]",
        show_default=False,
    ),
]
QueueOpt = Annotated[
    str,
    typer.Option("--queue", "-q", metavar="QUEUE", help="the work queue whose dead letters to use"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def fail(message: str) -> NoReturn:
    """Print one line on stderr (passwords masked) and exit with code 2."""
    typer.echo(f"error: {mask_secrets(message)}", err=True)
    raise typer.Exit(2)


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn rabbitworker errors into one line on stderr and exit code 2; anything else
    is a bug, whose traceback is printed with passwords masked, and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RabbitWorkerError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception:
            # Python would print it unmasked: an error message may quote the URL.
            typer.echo(mask_secrets(traceback.format_exc()).rstrip(), err=True)
            raise typer.Exit(1) from None

    return wrapper


def load_app(path: str) -> App:
    """Import `module:attribute` and return the App there; raises `ConfigurationError`."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--app must look like module:attribute, got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise ConfigurationError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, App):
        raise ConfigurationError(f"{path} is a {type(obj).__name__}, not a rabbitworker App")
    return obj


def get_app(app_path: str | None, url: str | None, **settings: Any) -> App:
    """The app named by `--app` (or RABBITWORKER_APP), configured with the options
    given; its URL is checked now, so a bad one is one line before anything waits."""
    for given in (url, os.environ.get("RABBITWORKER_URL")):
        if given:
            hide_password(given)  # before anything can fail and print it
    path = app_path or _env_setting("app")
    if not path:
        fail("no app given: pass --app module:attribute or set RABBITWORKER_APP")
    app = load_app(path)
    app.configure(url=url, **settings)
    parse_broker_url(app.settings.url)
    # Warnings from any command then go through the password filter too (`run` sets
    # its own level later).
    setup_logging("WARNING", app.settings.url)
    return app


def _env_setting(name: str) -> Any:
    try:
        return getattr(Settings(), name)
    except ValueError as exc:
        fail(f"invalid settings in the environment: {str(exc).splitlines()[0]}")


def run_async(app: App, coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Connect `app`, run `coro`, close."""

    async def main() -> T:
        async with app:
            return await coro()

    return asyncio.run(main())
