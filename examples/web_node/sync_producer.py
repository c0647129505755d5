"""A producer without an event loop of its own, like a Flask or Django view: eight
threads call and publish through the blocking facade `app.sync` at once."""

from concurrent.futures import ThreadPoolExecutor

from tasks import PriceQuote, SendReceipt, app

SKUS = ("apple", "pear", "plum")


def handle_order(order_id: int) -> str:
    """What a sync view would do: ask a worker for the price, then queue the receipt."""
    sku = SKUS[order_id % len(SKUS)]
    quote = app.sync.call(PriceQuote(sku=sku, quantity=order_id), timeout=5)
    message_id = app.sync.publish(SendReceipt(order_id=order_id))
    return f"order {order_id}: {quote.quantity} x {sku} = {quote.total_cents} cents ({message_id})"


def main() -> None:
    with ThreadPoolExecutor(max_workers=8) as threads:
        for line in threads.map(handle_order, range(1, 17)):
            print(line)
    # No close() needed: the facade closes its connection when the interpreter exits.


if __name__ == "__main__":
    main()
