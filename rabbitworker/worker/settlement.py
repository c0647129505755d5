"""Settling a delivery: the follow-up publishes its outcome needs (the RPC reply, the
retry copy, the dead letter), each confirmed by the broker, and only then the ack.
A retry and a dead letter are moves (`rabbitworker.move`): the confirmed copy, the
`on_settle` hooks, then the ack.

A follow-up that fails for a reason that may pass (the connection, a missing
confirm) requeues the delivery (a nack) to be tried again; one refused for good (a
header AMQP cannot carry, a queue that exists with other arguments) dead-letters the
delivery at once with that reason, since trying again would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from ..errors import (
    ConnectionFailed,
    DecodeError,
    HeaderError,
    MessageTooLarge,
    NotConfirmed,
    UnroutableError,
)
from ..message import encode_reply
from ..middleware.base import Middleware, Outcome, PublishHooks, Settled, overrides
from ..move import acknowledge, move
from ..rpc import error_reply_body
from ..topology import (
    QueueType,
    dead_letter_exchange_name,
    retry_exchange_name,
    retry_queue_spec,
)
from ..transport import Delivery, Transport
from ..wire import (
    ATTEMPT,
    attempt_of,
    check_size,
    error_headers,
    error_type,
    reply_properties,
)
from .processing import Processed

__all__ = ["FollowUpRefused", "Settlement", "is_transient"]

log = logging.getLogger("rabbitworker.worker")

# A delivery requeued because its follow-up could not be confirmed comes straight
# back; the pause keeps a broker that is briefly unable to confirm from being
# hammered by the same message.
REQUEUE_PAUSE_S = 1.0

BeforeAck = Callable[[], Awaitable[None]]


class FollowUpRefused(Exception):
    """A follow-up publish the broker refused for good; becomes the dead letter's
    reason (its `x-error-type` is the refusal's own type). `left_out` names the
    headers the dead letter goes without, because AMQP cannot carry their values."""

    def __init__(
        self,
        what: str,
        error: BaseException,
        original: BaseException | None,
        *,
        left_out: tuple[str, ...] = (),
    ) -> None:
        self.what = what
        self.error = error
        self.original = original
        self.left_out = left_out
        self.wire_error_type = error_type(error)
        text = f"{what} was refused: {_describe(error)}"
        if left_out:
            names = ", ".join(repr(name) for name in left_out)
            plural = "s" if len(left_out) > 1 else ""
            text += f"; the dead letter goes without header{plural} {names}"
        if original is not None:
            text += f"; the handler had failed with {_describe(original)}"
        super().__init__(text)

    def leaving_out(self, header: str) -> FollowUpRefused:
        """The same refusal, with `header` left out of the dead letter too."""
        return FollowUpRefused(
            self.what, self.error, self.original, left_out=(*self.left_out, header)
        )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def is_transient(error: BaseException) -> bool:
    """Whether a failed publish may succeed if tried again later."""
    if isinstance(error, ConnectionFailed):
        return not error.permanent
    return isinstance(error, NotConfirmed)


class Settlement:
    """Carries out outcomes on one transport."""

    def __init__(
        self,
        transport: Transport,
        exchange: str,
        *,
        queue_type: QueueType,
        max_message_size: int,
        middleware: Sequence[Middleware] = (),
        returned: Callable[[Delivery], None] = lambda _: None,
    ) -> None:
        self.transport = transport
        self.returned = returned  # told before a delivery is requeued
        # Hooks left as the base class's no-ops are not called at all.
        self._on_settle = [m for m in middleware if overrides(m, "on_settle")]
        self._publish_hooks = PublishHooks(middleware)
        self.exchange = exchange
        self.queue_type = queue_type
        self.max_message_size = max_message_size

    async def settle(self, delivery: Delivery, queue: str, processed: Processed) -> str:
        """Publish what the outcome needs, wait for the confirms, tell the `on_settle`
        hooks, then ack. Returns what was done: "ack", "retry", "dead_letter" or
        "handed_back" (requeued, to be tried again)."""
        outcome, result = processed.outcome, processed.result
        reply: bytes | None = None
        if outcome.kind == "ack" and delivery.properties.reply_to:
            try:
                reply = encode_reply(result)
                check_size(reply, self.max_message_size, "the reply")
            except Exception as exc:
                # A return value JSON cannot carry, or too large to send, fails the
                # same way on every attempt: an error reply and a dead letter, at once.
                outcome = Outcome.dead_letter(exc)
        try:
            await self._carry_out(delivery, queue, outcome, reply, processed)
        except Exception as exc:
            if is_transient(exc):
                return await self._requeue(delivery, queue, exc, processed)
            # Refused for good: trying again would fail the same way.
            refused = await self._dead_letter_refused(delivery, queue, outcome, exc, processed)
            if refused is None:
                return await self._requeue(delivery, queue, exc, processed)
            outcome = refused
        return outcome.kind

    def _announcing(
        self, processed: Processed, delivery: Delivery, queue: str, outcome: Outcome
    ) -> BeforeAck:
        """What a move does before its ack: tell the `on_settle` hooks."""
        return functools.partial(self._announce, processed, delivery, queue, outcome)

    async def _announce(
        self, processed: Processed, delivery: Delivery, queue: str, outcome: Outcome | None
    ) -> None:
        """Tell the `on_settle` hooks; one that fails is logged, not raised."""
        if not self._on_settle:
            return
        settled = Settled(
            delivery,
            queue,
            outcome.kind if outcome is not None else "handed_back",
            outcome.error if outcome is not None else processed.outcome.error,
            outcome.delay_ms if outcome is not None else 0,
            processed.result,
            processed.started_at,
            processed.duration,
        )
        for m in self._on_settle:
            try:
                await m.on_settle(processed.ctx, settled)
            except Exception:
                log.exception(
                    "middleware %s failed on message %s", type(m).__name__, delivery.message_id
                )

    async def announce_hand_back(self, delivery: Delivery, queue: str) -> None:
        """Tell the `on_settle` hooks of a delivery the drain returns to its queue."""
        await self._announce(Processed(Outcome.ack()), delivery, queue, None)

    async def _requeue(
        self, delivery: Delivery, queue: str, error: BaseException, processed: Processed
    ) -> str:
        """Return a delivery whose follow-up could not be published to its queue
        (a nack), after a pause: it is tried again (the outcome "handed_back")."""
        await self._announce(processed, delivery, queue, None)
        log.error(
            "message %s on %s: follow-up publish failed (%s); returning it to the queue",
            delivery.message_id,
            queue,
            error,
        )
        await asyncio.sleep(REQUEUE_PAUSE_S)
        self.returned(delivery)
        with contextlib.suppress(Exception):
            await delivery.nack(requeue=True)
        return "handed_back"

    async def _carry_out(
        self,
        delivery: Delivery,
        queue: str,
        outcome: Outcome,
        reply: bytes | None,
        processed: Processed,
    ) -> None:
        """The follow-ups, the `on_settle` hooks and the ack; raises what a follow-up
        publish raises, the delivery then still held."""
        announce = self._announcing(processed, delivery, queue, outcome)
        if outcome.kind == "ack":
            if reply is not None:
                await self.reply(delivery, reply, "ok")
            await announce()
            await acknowledge(delivery)
        elif outcome.kind == "retry":
            await self.retry(delivery, queue, outcome, before_ack=announce)
        else:
            assert outcome.error is not None
            if delivery.properties.reply_to:
                with contextlib.suppress(Exception):
                    # The caller may have gone away; the dead letter matters more.
                    await self.reply(delivery, error_reply_body(outcome.error), "error")
            await self.dead_letter(delivery, queue, outcome.error, before_ack=announce)

    async def reply(self, delivery: Delivery, body: bytes, status: str) -> None:
        """Send an RPC reply (`status` "ok" or "error") to the request's reply-to."""
        reply_to = delivery.properties.reply_to
        assert reply_to is not None
        properties = reply_properties(delivery.properties.correlation_id, status)
        # The caller may have gone away; an undeliverable reply is not an error.
        await self._publish_hooks.send(
            reply_to,
            properties,
            lambda: self.transport.send("", reply_to, body, properties, mandatory=False),
        )

    async def retry(
        self, delivery: Delivery, queue: str, outcome: Outcome, *, before_ack: BeforeAck
    ) -> None:
        """Move the delivery on to its next attempt: straight back to the queue, or
        through its retry queue."""
        attempt = attempt_of(delivery.headers)
        error = outcome.error
        log.warning(
            "message %s on %s failed on attempt %d (%s: %s); retrying in %d ms",
            delivery.message_id,
            queue,
            attempt,
            type(error).__name__,
            error,
            outcome.delay_ms,
        )
        spec = None
        exchange, key = "", queue
        if outcome.delay_ms > 0:
            spec = retry_queue_spec(self.exchange, queue, outcome.delay_ms, self.queue_type)
            exchange, key = retry_exchange_name(self.exchange), spec.name
            await self.transport.ensure_queue(spec)
        moving = functools.partial(
            move, self.transport, delivery, exchange, key, set_headers={ATTEMPT: attempt + 1}
        )
        try:
            await moving(before_ack=before_ack)
        except UnroutableError:
            if spec is None:
                raise
            # The retry queue expired between our declarations; declare it and move
            # once more. (Not on NotConfirmed: the copy may have landed.)
            await self.transport.ensure_queue(spec, force=True)
            await moving(before_ack=before_ack)

    async def dead_letter(
        self,
        delivery: Delivery,
        queue: str,
        error: BaseException,
        *,
        drop_headers: tuple[str, ...] = (),
        before_ack: BeforeAck | None = None,
    ) -> None:
        """Move the delivery of `queue` to its dead-letter queue, with the error in its
        headers; raises what the publish raises, the delivery then still held."""
        # Not refused for its size: the broker already holds it, and refusing would
        # leave it looping in its queue. Without its per-message TTL, as the broker
        # does when it dead-letters: the dead letter would expire in the dead-letter
        # queue, which has nowhere to send it.
        await move(
            self.transport,
            delivery,
            dead_letter_exchange_name(self.exchange),
            queue,
            set_headers=error_headers(error, queue=queue, attempt=attempt_of(delivery.headers)),
            drop_headers=drop_headers,
            keep_expiration=False,
            before_ack=before_ack,
        )
        if not isinstance(error, DecodeError | MessageTooLarge):
            log.error(
                "message %s on %s dead-lettered after attempt %d: %s",
                delivery.message_id,
                queue,
                attempt_of(delivery.headers),
                _describe(error),
            )

    async def _dead_letter_refused(
        self,
        delivery: Delivery,
        queue: str,
        outcome: Outcome,
        error: BaseException,
        processed: Processed,
    ) -> Outcome | None:
        """Dead-letter a delivery whose follow-up the broker refused for good, with the
        refusal as the reason. A header AMQP cannot carry is left out of the dead
        letter (and named in its reason). Returns the outcome carried out, or None
        when the dead letter could not be sent either."""
        what = {"ack": "the reply", "retry": "the retry copy"}.get(outcome.kind, "the dead letter")
        reason = FollowUpRefused(what, error, outcome.error)
        if delivery.properties.reply_to and outcome.kind != "dead_letter":
            with contextlib.suppress(Exception):
                # The caller is told now rather than never; it may have gone away.
                await self.reply(delivery, error_reply_body(reason), "error")
        while True:
            dead = Outcome.dead_letter(reason)
            announce = self._announcing(processed, delivery, queue, dead)
            try:
                await self.dead_letter(
                    delivery, queue, reason, drop_headers=reason.left_out, before_ack=announce
                )
            except HeaderError as exc:
                if exc.header in reason.left_out:
                    return None  # not a header of the delivery's: nothing left to drop
                reason = reason.leaving_out(exc.header)
            except Exception as again:
                log.error(
                    "message %s on %s: the dead letter was refused too: %s",
                    delivery.message_id,
                    queue,
                    again,
                )
                return None
            else:
                return dead
