"""OpenTelemetry tracing on a real broker: the handler's span continues the
publisher's trace through the `traceparent` header, and a message the handler
publishes continues it again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel
from support import eventually

from rabbitworker import App, Context, TaskMessage
from rabbitworker.ops.tracing import Tracing
from rabbitworker.worker import Worker


class Answer(BaseModel):
    n: int


async def test_the_handler_continues_the_publishers_trace_and_passes_it_on(
    make_app: Callable[..., App],
    start_worker: Callable[..., Awaitable[Worker]],
    prefix: str,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # not the global one: other tests stay untraced
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_app(middleware=[Tracing(tracer_provider=provider)])
    done = asyncio.Event()

    class First(TaskMessage, routing_key=f"{prefix}.first"):
        n: int

    class Second(TaskMessage, routing_key=f"{prefix}.second"):
        n: int

    @app.task(queue=f"{prefix}.first")
    async def first(msg: First, ctx: Context) -> None:
        await ctx.publish(Second(n=msg.n))

    @app.task(queue=f"{prefix}.second")
    async def second(msg: Second) -> None:
        done.set()

    class Third(TaskMessage[Answer], routing_key=f"{prefix}.third"):
        n: int

    @app.task(queue=f"{prefix}.third")
    async def third(msg: Third) -> Answer:
        return Answer(n=msg.n)

    await start_worker(app)
    await app.publish(First(n=1))
    await asyncio.wait_for(done.wait(), 15)
    await eventually(lambda: len(exporter.get_finished_spans()) == 4)

    spans = {(s.name, s.kind): s for s in exporter.get_finished_spans()}
    published = spans[(f"{prefix}.first publish", SpanKind.PRODUCER)]
    handled = spans[(f"{prefix}.first process", SpanKind.CONSUMER)]
    follow_up = spans[(f"{prefix}.second publish", SpanKind.PRODUCER)]
    handled_2 = spans[(f"{prefix}.second process", SpanKind.CONSUMER)]
    trace_id = published.context.trace_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert handled.parent is not None and handled.parent.span_id == published.context.span_id
    assert follow_up.parent is not None and follow_up.parent.span_id == handled.context.span_id
    assert handled_2.parent is not None and handled_2.parent.span_id == follow_up.context.span_id
    assert handled.attributes is not None
    assert handled.attributes["rabbitworker.outcome"] == "ok"

    # The reply of a call continues the caller's trace too.
    exporter.clear()
    assert await app.call(Third(n=5), timeout=10) == Answer(n=5)
    await eventually(lambda: len(exporter.get_finished_spans()) == 3)
    spans = {(s.name, s.kind): s for s in exporter.get_finished_spans()}
    request = spans[(f"{prefix}.third publish", SpanKind.PRODUCER)]
    handled_3 = spans[(f"{prefix}.third process", SpanKind.CONSUMER)]
    reply = spans[("(reply) publish", SpanKind.PRODUCER)]
    assert {s.context.trace_id for s in spans.values()} == {request.context.trace_id}
    assert reply.parent is not None and reply.parent.span_id == handled_3.context.span_id
