"""Testing an app's tasks without RabbitMQ: `TestBroker` runs the app and its worker
(the real decode, middleware, handler and settlement code) on `MemoryBroker`, an
in-memory broker with RabbitMQ's routing, dead-lettering and delivery limit, on a
virtual clock. `rabbitworker.testing.pytest_plugin` adds pytest fixtures."""

from .broker import Attempt, TestBroker
from .node import MemoryBroker
from .queues import DeadLetter, Message
from .transport import MemoryTransport

__all__ = ["Attempt", "DeadLetter", "MemoryBroker", "MemoryTransport", "Message", "TestBroker"]
