"""RPC over direct reply-to: one long-lived reply consumer per client, replies
matched to waiting calls by correlation id, and the reply wire format."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, Generic

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from pydantic import ValidationError

from .errors import ConnectionFailed, DecodeError, RemoteError, RPCTimeout
from .message import R, TaskMessage, reply_adapter
from .topology import DIRECT_REPLY_TO

if TYPE_CHECKING:
    from .publisher import Publisher

__all__ = [
    "RPC_RETRY_HEADER",
    "RPC_STATUS_HEADER",
    "PendingReply",
    "RPCClient",
    "error_reply_body",
]

log = logging.getLogger("rabbitworker.rpc")

RPC_STATUS_HEADER = "x-rpc-status"  # "ok" or "error" on every reply
RPC_RETRY_HEADER = "x-rpc-retry"  # set on requests whose caller allows retries


def error_reply_body(error: BaseException) -> bytes:
    """The body of an error reply: the remote exception's type and message."""
    if isinstance(error, RemoteError):
        kind, text = error.remote_type, error.remote_message
    else:
        kind, text = type(error).__name__, str(error)
    return json.dumps({"type": kind, "message": text}).encode()


class PendingReply(Generic[R]):
    """A published RPC request whose reply has not been awaited yet."""

    def __init__(
        self,
        client: RPCClient,
        correlation_id: str,
        message_id: str,
        future: asyncio.Future[Any],
        reply_type: Any,
    ) -> None:
        self._client = client
        self.correlation_id = correlation_id
        self.message_id = message_id
        self._future = future
        self._reply_type = reply_type

    def done(self) -> bool:
        return self._future.done()

    async def result(self, timeout: float | None = None) -> R:
        """Wait for the reply; raises `RPCTimeout`, `RemoteError` or `ConnectionFailed`."""
        try:
            message = await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            self._client.forget(self.correlation_id)
            raise RPCTimeout(f"no reply to {self.message_id} within {timeout} s") from None
        finally:
            if self._future.done():
                self._client.forget(self.correlation_id)
        return self._decode(message)

    def _decode(self, message: AbstractIncomingMessage) -> R:
        headers = message.headers or {}
        if headers.get(RPC_STATUS_HEADER) == "error":
            try:
                err = json.loads(message.body)
                raise RemoteError(str(err["type"]), str(err["message"]))
            except (ValueError, KeyError, TypeError):
                raise RemoteError("UnknownError", message.body.decode(errors="replace")) from None
        try:
            value: R = reply_adapter(self._reply_type).validate_json(message.body)
        except ValidationError as exc:
            raise DecodeError(f"reply does not validate: {exc}", body=message.body) from exc
        return value


class RPCClient:
    """Sends requests and routes replies back to their callers.

    Any number of calls run concurrently on one channel: each waits on its own
    future in a map keyed by correlation id.
    """

    def __init__(self, channel: AbstractChannel, publisher: Publisher) -> None:
        self.channel = channel
        self.publisher = publisher
        self._waiting: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            queue = await self.channel.declare_queue(DIRECT_REPLY_TO, passive=True)
            await queue.consume(self._on_reply, no_ack=True)
            self._started = True

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._waiting.pop(message.correlation_id or "", None)
        if future is None or future.done():
            log.debug("dropping a late or unknown reply, correlation id %s", message.correlation_id)
            return
        future.set_result(message)

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def fail_all(self, reason: str) -> None:
        """Fail every waiting call, e.g. when the connection is lost."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionFailed(reason))

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        if not self._started:
            await self.start()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        headers = {RPC_RETRY_HEADER: True} if retry else None
        try:
            message_id = await self.publisher.publish(
                msg, headers=headers, correlation_id=correlation_id, reply_to=DIRECT_REPLY_TO
            )
        except BaseException:
            self._waiting.pop(correlation_id, None)
            raise
        return PendingReply(self, correlation_id, message_id, future, type(msg).reply_type())
