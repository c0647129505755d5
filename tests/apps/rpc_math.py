"""RPC tasks for the tests run against a worker subprocess: typed replies, a sync
handler, an untyped reply, a handler that raises, and a plain published task."""

from __future__ import annotations

import os

from pydantic import BaseModel
from recording import name, record

from rabbitworker import App, Context, TaskMessage

app = App("rpc-math", exchange=name("x"))


class AddResult(BaseModel):
    value: int


class Add(TaskMessage[AddResult], routing_key="math.add"):
    a: int
    b: int


class Multiply(TaskMessage[AddResult], routing_key="math.multiply"):
    a: int
    b: int


class Describe(TaskMessage, routing_key="math.describe"):
    n: int


class Divide(TaskMessage[float], routing_key="math.divide"):
    a: float
    b: float


class Note(TaskMessage, routing_key="math.note"):
    n: int


@app.task(queue=name("rpc"))
async def add(msg: Add) -> AddResult:
    return AddResult(value=msg.a + msg.b)


@app.task(queue=name("rpc"))
def multiply(msg: Multiply) -> AddResult:  # a plain def: its reply comes from a thread
    return AddResult(value=msg.a * msg.b)


@app.task(queue=name("rpc"))
async def describe(msg: Describe) -> dict[str, object]:
    return {"n": msg.n, "even": msg.n % 2 == 0, "pid": os.getpid()}


@app.task(queue=name("rpc"))
async def divide(msg: Divide) -> float:
    return msg.a / msg.b  # b=0 raises ZeroDivisionError, which the caller sees


@app.task(queue=name("notes"))
async def note(msg: Note, ctx: Context) -> None:
    record("note", msg.n, ctx.message_id)
