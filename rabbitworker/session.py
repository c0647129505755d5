"""A `Session`: one open connection of an app, with its producer, RPC client and
results tracker. An app has one for the event loop it was entered on; the blocking
facade opens its own on its background loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .middleware.base import PublishHooks
from .producer import Producer
from .results.tracking import Tracker
from .rpc import RPCClient
from .transport import Transport

if TYPE_CHECKING:
    from .app import App

__all__ = ["Session"]


class Session:
    """One open connection of an app: its transport, producer and RPC client.

    An app has one for the event loop it was entered on; the blocking facade opens
    its own on its background loop.
    """

    def __init__(self, app: App, transport: Transport, tracker: Tracker | None = None) -> None:
        s = app.settings
        self.transport = transport
        self.tracker = tracker
        self.producer = Producer(
            transport,
            app.exchange,
            queue_type=s.queue_type,
            max_message_size=s.max_message_size,
            is_bound=app.registry.is_bound,
            tracker=tracker,
            hooks=PublishHooks(app.middleware),
        )
        self.rpc = RPCClient(transport, self.producer, timeout=s.publish_timeout)

    @classmethod
    async def open(cls, app: App) -> Session:
        """Connect and declare the app's whole topology; open the results store."""
        transport = app.make_transport()
        await transport.open()
        try:
            await transport.declare(app.topology())
        except BaseException:
            await transport.close()
            raise
        return cls(app, transport, app.make_tracker())

    async def close(self, reason: str) -> None:
        self.rpc.fail_all(reason)
        try:
            await self.transport.close()
        finally:
            if self.tracker is not None:
                await self.tracker.store.close()
