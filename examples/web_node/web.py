"""The web node: a FastAPI app whose endpoints publish a task and call an RPC task
over the connection its lifespan opens."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from tasks import PriceQuote, Quote, RenderReport, SendReceipt, app

from rabbitworker import RemoteError, RPCTimeout, call, publish
from rabbitworker.results import TaskStatus


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # One connection for the whole process: opened (and the topology declared)
    # before the first request, closed at shutdown.
    async with app:
        yield


api = FastAPI(title="web node", lifespan=lifespan)


class Order(BaseModel):
    order_id: int = Field(gt=0)


class Accepted(BaseModel):
    message_id: str


@api.post("/orders", status_code=202)
async def place_order(order: Order) -> Accepted:
    """Queue the receipt and answer at once; a worker sends it."""
    message_id = await publish(SendReceipt(order_id=order.order_id))
    return Accepted(message_id=message_id)


@api.get("/quotes/{sku}")
async def get_quote(sku: str, quantity: int = 1) -> Quote:
    """Ask a worker for a price and wait (at most 5 s) for its answer."""
    try:
        return await call(PriceQuote(sku=sku, quantity=quantity), timeout=5)
    except RemoteError as exc:
        if exc.remote_type == "UnknownProduct":
            raise HTTPException(404, exc.remote_message) from None
        raise HTTPException(502, "the pricing worker failed") from None
    except RPCTimeout:
        raise HTTPException(504, "no pricing worker answered in time") from None


class ReportRequest(BaseModel):
    report_id: int = Field(gt=0)


class ReportAccepted(BaseModel):
    message_id: str
    status_url: str


@api.post("/reports", status_code=202)
async def request_report(request: ReportRequest) -> ReportAccepted:
    """Step one: queue the report and answer at once with where to look for it."""
    message_id = await publish(RenderReport(report_id=request.report_id))
    return ReportAccepted(message_id=message_id, status_url=f"/reports/{message_id}")


@api.get("/reports/{message_id}")
async def report_status(message_id: str) -> TaskStatus:
    """Step two, from any web node: the report's state, and its result once ready."""
    status = await app.status(message_id)
    if status is None:
        raise HTTPException(404, f"no report {message_id} (unknown or expired)")
    return status
