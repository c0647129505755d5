"""RPC over direct reply-to: one long-lived reply consumer per client, replies
matched to waiting calls by correlation id, and the reply wire format."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, Generic

from pydantic import ValidationError

from .errors import ConnectionFailed, DecodeError, RemoteError, RPCTimeout
from .message import R, TaskMessage, reply_adapter
from .producer import Producer
from .transport import Delivery, Transport
from .wire import DIRECT_REPLY_TO, RPC_RETRY, RPC_STATUS

__all__ = ["PendingReply", "RPCClient", "decode_reply", "error_reply_body"]

log = logging.getLogger("rabbitworker.rpc")

# submit() is bounded by the publish timeout, which the publish (and the reply
# consumer's start, by the connect timeout) keeps itself, saying why: connection lost,
# not confirmed, broker blocking publishers. The outer bound, this much later, is a
# backstop for their sum.
_SUBMIT_SLACK_S = 0.5


def error_reply_body(error: BaseException) -> bytes:
    """The body of an error reply: the remote exception's type and message."""
    if isinstance(error, RemoteError):
        kind, text = error.remote_type, error.remote_message
    else:
        explicit = getattr(error, "wire_error_type", None)
        kind, text = explicit or type(error).__name__, str(error)
    return json.dumps({"type": kind, "message": text}).encode()


class PendingReply(Generic[R]):
    """A published RPC request whose reply has not been awaited yet."""

    def __init__(
        self,
        client: RPCClient,
        correlation_id: str,
        message_id: str,
        future: asyncio.Future[Delivery],
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
        """Wait for the reply; raises `RPCTimeout`, `RemoteError` or `ConnectionFailed`.

        `timeout=None` waits as long as it takes."""
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


def decode_reply(message: Delivery, reply_type: Any) -> Any:
    """The reply's value validated as `reply_type`; raises `RemoteError` for an error reply."""
    if message.headers.get(RPC_STATUS) == "error":
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

    def __init__(self, transport: Transport, producer: Producer, *, timeout: float) -> None:
        self.transport = transport
        self.producer = producer
        self.timeout = timeout  # bounds submit(): the reply consumer's start and the confirm
        self._waiting: dict[str, asyncio.Future[Delivery]] = {}
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.transport.consume_replies(self._on_reply, self._on_lost)
                self._started = True

    async def _on_reply(self, message: Delivery) -> None:
        future = self._waiting.pop(message.properties.correlation_id or "", None)
        if future is None or future.done():
            log.debug(
                "dropping a late or unknown reply, correlation id %s",
                message.properties.correlation_id,
            )
            return
        future.set_result(message)

    def _on_lost(self, reason: str) -> None:
        # Direct reply-to replies are bound to the channel that sent the request: when
        # it closes (the robust channel then reopens), no reply to a waiting call can
        # arrive any more.
        if self._waiting:
            why = f": {reason}" if reason else ""
            self.fail_all(f"the channel carrying the replies was closed{why}")

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

    def _blocked_note(self) -> str:
        # A publish the broker blocks is the likely cause.
        if self.transport.blocked:
            return ": the broker is blocking publishers (a memory or disk alarm on the broker)"
        return ""

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def _expect(self) -> tuple[str, asyncio.Future[Delivery]]:
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        return correlation_id, future

    async def _send(self, msg: TaskMessage[Any], correlation_id: str, retry: bool) -> str:
        if not self._started:
            await self.start()
        # Not published again after a reconnect (the transport sees the reply-to): the
        # reply channel is new by then, so the caller hears of the loss at once.
        return await self.producer.publish(
            msg,
            headers={RPC_RETRY: True} if retry else None,
            correlation_id=correlation_id,
            reply_to=DIRECT_REPLY_TO,
        )

    async def submit(self, msg: TaskMessage[R], *, retry: bool = False) -> PendingReply[R]:
        """Publish a request; returns once the broker confirmed it, within the
        publish timeout."""
        correlation_id, future = self._expect()
        try:
            async with asyncio.timeout(self.timeout + _SUBMIT_SLACK_S):
                message_id = await self._send(msg, correlation_id, retry)
        except TimeoutError:
            self._waiting.pop(correlation_id, None)
            raise RPCTimeout(
                f"the request was not confirmed within {self.timeout:g} s (publish_timeout)"
                f"{self._blocked_note()}"
            ) from None
        except BaseException:
            self._waiting.pop(correlation_id, None)
            raise
        return PendingReply(self, correlation_id, message_id, future, type(msg).reply_type())

    async def call(self, msg: TaskMessage[R], *, timeout: float, retry: bool = False) -> R:
        """Publish a request and wait for its reply; `timeout` bounds every step."""
        started = time.perf_counter()
        try:
            value = await self._call(msg, timeout=timeout, retry=retry)
        except Exception as exc:
            self.producer.hooks.called(type(msg).routing_key, time.perf_counter() - started, exc)
            raise
        self.producer.hooks.called(type(msg).routing_key, time.perf_counter() - started, None)
        return value

    async def _call(self, msg: TaskMessage[R], *, timeout: float, retry: bool) -> R:
        correlation_id, future = self._expect()
        confirmed = False
        try:
            async with asyncio.timeout(timeout):
                await self._send(msg, correlation_id, retry)
                confirmed = True
                message = await future
        except TimeoutError:
            within = f"within {round(timeout, 3):g} s"  # the blocking client's may be computed
            if confirmed:
                raise RPCTimeout(f"no reply {within}") from None
            raise RPCTimeout(
                f"the request was not confirmed {within}{self._blocked_note()}"
            ) from None
        finally:
            self._waiting.pop(correlation_id, None)
        value: R = decode_reply(message, type(msg).reply_type())
        return value
