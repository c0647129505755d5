"""The in-memory broker's own semantics, beyond what tests/testing/test_behaviour.py holds to
RabbitMQ: the other exchange types, refusals as RabbitMQ words them, and the
dead-lettering bookkeeping (`x-death`) of rejected and twice-dead messages."""

from __future__ import annotations

import pytest

from rabbitworker.errors import BrokerError, PublishError, UnroutableError
from rabbitworker.testing import MemoryBroker
from rabbitworker.topology import ExchangeSpec, QueueSpec
from rabbitworker.transport import Delivery
from rabbitworker.wire import Properties


def make_broker(*exchanges: tuple[str, str]) -> MemoryBroker:
    broker = MemoryBroker()
    for name, kind in exchanges:
        broker.declare_exchange(ExchangeSpec(name, kind))  # type: ignore[arg-type]
    return broker


def queue(name: str, *bindings: tuple[str, str], **arguments: object) -> QueueSpec:
    return QueueSpec(name, {"x-queue-type": "quorum", **arguments}, bindings)


def send(broker: MemoryBroker, exchange: str, key: str, **headers: object) -> None:
    broker.publish(exchange, key, b"{}", Properties(headers=dict(headers)), True)


def test_a_direct_exchange_matches_whole_keys_and_a_queue_bound_twice_gets_one_copy() -> None:
    broker = make_broker(("d", "direct"), ("t", "topic"))
    broker.declare_queue(queue("q", ("d", "a.b"), ("t", "a.*"), ("t", "#")))
    send(broker, "d", "a.b")
    send(broker, "t", "a.b")
    with pytest.raises(UnroutableError):
        send(broker, "d", "a.c")
    assert [m.routing_key for m in broker.queues["q"].ready] == ["a.b", "a.b"]


@pytest.mark.parametrize(
    ("match", "expected"), [("all", ["both"]), ("any", ["both", "one"])], ids=["all", "any"]
)
def test_a_headers_exchange_matches_all_or_any_of_the_binding_arguments(
    match: str, expected: list[str]
) -> None:
    broker = make_broker(("h", "headers"))
    spec = QueueSpec(
        "q", {}, (("h", ""),), binding_arguments={"x-match": match, "a": "1", "b": "2"}
    )
    broker.declare_queue(spec)
    send(broker, "h", "both", a="1", b="2")
    broker.publish("h", "one", b"{}", Properties(headers={"a": "1"}), False)
    broker.publish("h", "none", b"{}", Properties(headers={"c": "1"}), False)
    assert [m.routing_key for m in broker.queues["q"].ready] == expected


def test_refusals_are_worded_as_rabbitmq_words_them() -> None:
    broker = make_broker(("t", "topic"))
    broker.declare_queue(queue("q", ("t", "k")))
    with pytest.raises(PublishError, match="NOT_FOUND - no exchange 'nowhere'"):
        send(broker, "nowhere", "k")
    with pytest.raises(BrokerError, match="PRECONDITION_FAILED - inequivalent arguments"):
        broker.declare_queue(queue("q", **{"x-message-ttl": 5}))
    with pytest.raises(BrokerError, match="inequivalent arg 'type'"):
        broker.declare_exchange(ExchangeSpec("t", "direct"))
    with pytest.raises(BrokerError, match="NOT_FOUND - no exchange 'gone'"):
        broker.declare_queue(queue("r", ("gone", "k")))
    with pytest.raises(BrokerError, match="NOT_FOUND - no queue 'missing'"):
        broker.purge("missing")
    assert broker.inspect("missing") is None
    send(broker, "t", "k")
    assert broker.purge("q") == 1


def take(broker: MemoryBroker, name: str) -> Delivery:
    from rabbitworker.testing.queues import MemoryChannel

    return broker.take(broker.queues[name], MemoryChannel("test"))


def test_a_rejected_message_dies_to_its_dead_letter_exchange_and_counts_each_death() -> None:
    broker = make_broker(("t", "topic"), ("dlx", "direct"))
    broker.declare_queue(queue("q", ("t", "k"), **{"x-dead-letter-exchange": "dlx"}))
    broker.declare_queue(queue("back", ("dlx", "k"), **{"x-dead-letter-exchange": "t"}))
    send(broker, "t", "k")
    broker.settle(take(broker, "q"), requeue=False)  # q -> dlx -> back
    broker.settle(take(broker, "back"), requeue=False)  # back -> t -> q
    broker.settle(take(broker, "q"), requeue=False)  # q -> dlx -> back, its second death in q
    [message] = broker.queues["back"].ready
    deaths = message.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        ("q", "rejected", 2),
        ("back", "rejected", 1),
    ]
    assert deaths[0]["exchange"] == "t" and deaths[0]["routing-keys"] == ["k"]
    assert message.headers["x-first-death-queue"] == "q"
    assert message.headers["x-first-death-reason"] == "rejected"


def test_a_dead_letter_with_nowhere_to_go_is_dropped_as_rabbitmq_drops_it() -> None:
    broker = make_broker(("t", "topic"), ("dlx", "direct"))
    broker.declare_queue(queue("q", ("t", "k"), **{"x-dead-letter-exchange": "dlx"}))
    broker.declare_queue(queue("plain", ("t", "p")))
    send(broker, "t", "k")
    send(broker, "t", "p")
    broker.settle(take(broker, "q"), requeue=False)
    broker.settle(take(broker, "plain"), requeue=False)
    assert [m.routing_key for m in broker.dropped] == ["k", "p"]
