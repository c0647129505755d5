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
            raise RPCTimeout(f"no reply to {self.message_id} within {timeout:g} s") from None
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
        # Direct reply-to replies are bound to the channel that sent the request: when
        # it closes (the robust channel then reopens), no reply to a waiting call can
        # arrive any more.
        channel.close_callbacks.add(self._on_channel_closed)

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

    def _on_channel_closed(self, _: Any, exc: BaseException | None) -> None:
        if self._waiting:
            reason = f": {exc}" if exc and not isinstance(exc, asyncio.CancelledError) else ""
            self.fail_all(f"the channel carrying the replies was closed{reason}")

    def forget(self, correlation_id: str) -> None:
        self._waiting.pop(correlation_id, None)

    def fail_all(self, reason: str) -> None:
        """Fail every waiting call, e.g. when the connection is lost."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionFailed(reason))
                # Retrieved here so a submit() nobody awaits does not log
                # "exception was never retrieved"; awaiting it still raises.
                future.exception()

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        """Publish a request; returns once the broker confirmed it."""
        if not self._started:
            await self.start()
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        headers = {RPC_RETRY_HEADER: True} if retry else None
        publishing = asyncio.ensure_future(
            self.publisher.publish(
                msg, headers=headers, correlation_id=correlation_id, reply_to=DIRECT_REPLY_TO
            )
        )
        try:
            # A lost connection or a closed app fails the future while the publish may
            # still wait for a reconnect: the caller hears of it at once.
            await asyncio.wait((publishing, future), return_when=asyncio.FIRST_COMPLETED)
            lost = None if publishing.done() else future.exception()
            if lost is not None:
                raise lost
            message_id = await publishing
        except BaseException:
            self._waiting.pop(correlation_id, None)
            publishing.cancel()
            raise
        return PendingReply(self, correlation_id, message_id, future, type(msg).reply_type())

    async def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Publish a request and wait for its reply; `timeout` bounds both steps."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                pending = await self.submit(msg, retry=retry)
        except TimeoutError:
            raise RPCTimeout(f"the request was not confirmed within {timeout:g} s") from None
        try:
            return await pending.result(timeout=max(0.0, deadline - loop.time()))
        except RPCTimeout:
            raise RPCTimeout(f"no reply to {pending.message_id} within {timeout:g} s") from None
