"""RPC over direct reply-to: one long-lived reply consumer per client, replies
matched to waiting calls by correlation id, and the reply wire format."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, Generic

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustChannel
from pydantic import ValidationError

from .consumer import DirectQueue
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
        if self._future.cancelled():
            raise RPCTimeout(f"the wait for a reply to {self.message_id} already timed out")
        try:
            # On timeout the future is cancelled and forgotten: a late reply is dropped.
            async with asyncio.timeout(timeout):
                message = await self._future
        except TimeoutError:
            raise RPCTimeout(f"no reply to {self.message_id} within {timeout:g} s") from None
        finally:
            self._client.forget(self.correlation_id)
        value: R = decode_reply(message, self._reply_type)
        return value


def decode_reply(message: AbstractIncomingMessage, reply_type: Any) -> Any:
    """The reply's value validated as `reply_type`; raises `RemoteError` for an error reply."""
    headers = message.headers or {}
    if headers.get(RPC_STATUS_HEADER) == "error":
        try:
            err = json.loads(message.body)
            remote = RemoteError(str(err["type"]), str(err["message"]))
        except (ValueError, KeyError, TypeError):
            remote = RemoteError("UnknownError", message.body.decode(errors="replace"))
        raise remote
    try:
        return reply_adapter(reply_type).validate_json(message.body)
    except ValidationError as exc:
        raise DecodeError(f"reply does not validate: {exc}", body=message.body) from exc


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
            # One task per reply, not aio-pika's two; what this channel declares
            # elsewhere (the topology) is never consumed, so the class changes nothing
            # for it.
            self.channel.QUEUE_CLASS = DirectQueue
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

    def _expect(self) -> tuple[str, asyncio.Future[AbstractIncomingMessage]]:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[AbstractIncomingMessage] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        return correlation_id, future

    async def _send(self, msg: TaskMessage[Any], correlation_id: str, retry: bool) -> str:
        channel = self.channel
        if isinstance(channel, AbstractRobustChannel):
            # The broker refuses a request to amq.rabbitmq.reply-to unless the reply
            # consumer is on the channel: after a reconnect, wait until it is restored.
            try:
                async with asyncio.timeout(self.publisher.timeout):
                    await channel.ready()
            except TimeoutError:
                raise ConnectionFailed(
                    f"the connection to the broker was not back within "
                    f"{self.publisher.timeout:g} s (publish_timeout)"
                ) from None
        # Not published again after a reconnect: the reply-to channel is new by then,
        # so the caller hears of the lost connection at once (ConnectionFailed).
        return await self.publisher.publish(
            msg,
            headers={RPC_RETRY_HEADER: True} if retry else None,
            correlation_id=correlation_id,
            reply_to=DIRECT_REPLY_TO,
            resend=False,
        )

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        """Publish a request; returns once the broker confirmed it."""
        if not self._started:
            await self.start()
        correlation_id, future = self._expect()
        try:
            message_id = await self._send(msg, correlation_id, retry)
        except BaseException:
            self._waiting.pop(correlation_id, None)
            raise
        return PendingReply(self, correlation_id, message_id, future, type(msg).reply_type())

    async def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Publish a request and wait for its reply; `timeout` bounds both steps."""
        if not self._started:
            await self.start()
        correlation_id, future = self._expect()
        confirmed = False
        try:
            async with asyncio.timeout(timeout):
                await self._send(msg, correlation_id, retry)
                confirmed = True
                message = await future
        except TimeoutError:
            if confirmed:
                raise RPCTimeout(f"no reply within {timeout:g} s") from None
            raise RPCTimeout(f"the request was not confirmed within {timeout:g} s") from None
        finally:
            self._waiting.pop(correlation_id, None)
        value: R = decode_reply(message, type(msg).reply_type())
        return value
