"""The pytest plugin (registered under the `rabbitworker` name by the package's
`pytest11` entry point): a `rabbitworker_broker` fixture that runs the app returned
by the `rabbitworker_app` fixture, which a project defines, on a `TestBroker`.

Needs pytest-asyncio. Disable it with ``-p no:rabbitworker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..app import App
    from .broker import TestBroker

__all__ = ["rabbitworker_app", "rabbitworker_broker"]


@pytest.fixture
def rabbitworker_app() -> App:
    """The app under test: override this fixture in your conftest.py."""
    raise pytest.UsageError(
        "define a `rabbitworker_app` fixture returning your App (in conftest.py) to use "
        "the `rabbitworker_broker` fixture"
    )


async def _broker(rabbitworker_app: App) -> AsyncIterator[TestBroker]:
    from .broker import TestBroker

    async with TestBroker(rabbitworker_app) as broker:
        yield broker


def _missing() -> None:
    raise pytest.UsageError("the rabbitworker_broker fixture needs pytest-asyncio installed")


# The plugin loads wherever rabbitworker is installed: without pytest-asyncio it must
# not break pytest, only say what the fixture needs.
rabbitworker_broker: Any
try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover
    rabbitworker_broker = pytest.fixture(_missing, name="rabbitworker_broker")
else:
    rabbitworker_broker = _async_fixture(_broker, name="rabbitworker_broker")
