"""OpenTelemetry tracing: the `Tracing` middleware. A publish runs in a producer
span whose W3C trace context goes out in the message's `traceparent` header; the
handler runs in a consumer span that continues that trace, and what the handler
publishes (or the reply it returns) continues it in turn.

Needs opentelemetry-api (`pip install 'rabbitworker[otel]'`) and an SDK set up by
the application; nothing of OpenTelemetry is imported unless `Tracing` is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..middleware.base import OUTCOME_NAMES, Middleware, Settled
from ..wire import TRACEPARENT, TRACESTATE, routing_label

if TYPE_CHECKING:
    from ..context import Context
    from ..wire import Properties

__all__ = ["Tracing"]

_STATE = "rabbitworker.tracing"


class Tracing(Middleware):
    """Spans for publishing and handling, linked through the `traceparent` header.

    `tracer_provider` defaults to the global one. Raises `ConfigurationError` when
    opentelemetry-api is not installed.
    """

    def __init__(self, *, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise ConfigurationError(
                "tracing needs opentelemetry: pip install 'rabbitworker[otel]'"
            ) from None
        self._context = context
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self._tracer = trace.get_tracer("rabbitworker", tracer_provider=tracer_provider)
        self._publishing: dict[int, Any] = {}

    async def before_process(self, ctx: Context) -> None:
        carrier = {k: str(ctx.headers[k]) for k in (TRACEPARENT, TRACESTATE) if k in ctx.headers}
        parent = self._propagator.extract(carrier)
        span = self._tracer.start_span(
            f"{ctx.queue} process",
            context=parent,
            kind=self._trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": ctx.queue,
                "messaging.message.id": ctx.message_id,
                "messaging.rabbitmq.destination.routing_key": ctx.routing_key,
                "rabbitworker.attempt": ctx.attempt,
            },
        )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        ctx.state[_STATE] = (span, token)

    async def after_process(self, ctx: Context, result: Any, error: BaseException | None) -> None:
        held = ctx.state.get(_STATE)
        if held is not None and error is not None:
            span = held[0]
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)))

    async def on_settle(self, ctx: Context | None, settled: Settled) -> None:
        held = ctx.state.pop(_STATE, None) if ctx is not None else None
        if held is None:
            return
        span, token = held
        span.set_attribute("rabbitworker.outcome", OUTCOME_NAMES[settled.kind])
        span.end()
        self._context.detach(token)

    def before_publish(self, routing_key: str, properties: Properties) -> None:
        span = self._tracer.start_span(
            f"{routing_label(routing_key)} publish",
            kind=self._trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.message.id": properties.message_id or "",
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        for name in (TRACEPARENT, TRACESTATE):
            if name in carrier:
                properties.headers[name] = carrier[name]
        self._publishing[id(properties)] = span

    def after_publish(
        self,
        routing_key: str,
        properties: Properties,
        duration: float,
        error: BaseException | None,
    ) -> None:
        span = self._publishing.pop(id(properties), None)
        if span is None:
            return
        if error is not None:
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(error)))
        span.end()
