"""The tasks of the web node example, imported by the web app, the sync producer
and the worker alike."""

import os

from pydantic import BaseModel

from rabbitworker import App, Context, TaskMessage

# Every broker name carries this prefix, so several copies can share one broker.
PREFIX = os.environ.get("WEB_NODE_PREFIX", "webnode")

# Broker URL from RABBITWORKER_URL; the results store (for the report endpoints) from
# RABBITWORKER_RESULTS, e.g. redis://127.0.0.1:6379/0.
app = App("web-node", exchange=PREFIX)

PRICES_CENTS = {"apple": 40, "pear": 55, "plum": 25}


class SendReceipt(TaskMessage, routing_key="orders.receipt"):
    order_id: int  # ids, never ORM objects


class Quote(BaseModel):
    sku: str
    quantity: int
    total_cents: int


class PriceQuote(TaskMessage[Quote], routing_key="prices.quote"):
    sku: str
    quantity: int


class UnknownProduct(LookupError):
    """No price for a SKU; the caller sees it as a RemoteError of this type."""


@app.task(queue=f"{PREFIX}.receipts")
async def send_receipt(msg: SendReceipt, ctx: Context) -> None:
    ctx.logger.info("receipt for order %d sent (message %s)", msg.order_id, ctx.message_id)


@app.task(queue=f"{PREFIX}.prices")
def price_quote(msg: PriceQuote) -> Quote:  # a plain def runs in the worker's thread pool
    try:
        unit = PRICES_CENTS[msg.sku]
    except KeyError:
        raise UnknownProduct(f"no product {msg.sku!r}") from None
    return Quote(sku=msg.sku, quantity=msg.quantity, total_cents=unit * msg.quantity)


class ReportReady(BaseModel):
    url: str
    pages: int


class RenderReport(TaskMessage[ReportReady], routing_key="reports.render"):
    report_id: int


@app.task(queue=f"{PREFIX}.reports", results=True)  # status and result kept in the store
async def render_report(msg: RenderReport, ctx: Context) -> ReportReady:
    ctx.logger.info("rendering report %d", msg.report_id)
    return ReportReady(url=f"/files/report-{msg.report_id}.pdf", pages=msg.report_id % 7 + 1)
