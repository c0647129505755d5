"""The web node: a FastAPI app whose endpoints publish a task and call an RPC task
over the connection its lifespan opens."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from tasks import PriceQuote, Quote, SendReceipt, app

from rabbitworker import RemoteError, RPCTimeout, call, publish


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
