"""Declaring the topology on a channel: every exchange, queue and binding of a
`Topology`, idempotently, and the expiring queues declared on demand."""

from __future__ import annotations

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustChannel

from ..topology import QueueSpec, Topology

__all__ = ["declare", "declare_apart", "declare_queue"]


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> None:
    """Declare one queue and its bindings."""
    if spec.expires and isinstance(channel, AbstractRobustChannel):
        # Expiring queues are redeclared on use; a robust channel would also keep
        # every redeclaration in its restore list, which grows with uptime.
        rqueue = await channel.declare_queue(
            spec.name, durable=True, arguments=spec.arguments, robust=False
        )
        for exchange, key in spec.bindings:
            if exchange:
                await rqueue.bind(exchange, key, arguments=spec.binding_arguments, robust=False)
        return
    queue = await channel.declare_queue(spec.name, durable=True, arguments=spec.arguments)
    for exchange, key in spec.bindings:
        if exchange:
            await queue.bind(exchange, key, arguments=spec.binding_arguments)


async def declare_apart(connection: aiormq.abc.AbstractConnection, spec: QueueSpec) -> None:
    """Declare one queue and its bindings on a channel opened for it alone: the
    broker closes the channel that asked when it refuses (the queue exists with other
    arguments), and that must not be a channel carrying confirms or RPC replies."""
    channel = await connection.channel()
    try:
        await channel.queue_declare(spec.name, durable=True, arguments=spec.arguments)
        for exchange, key in spec.bindings:
            if exchange:
                await channel.queue_bind(
                    spec.name, exchange, routing_key=key, arguments=spec.binding_arguments
                )
    finally:
        if not channel.is_closed:
            await channel.close()


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding; idempotent."""
    for ex in topology.exchanges:
        await channel.declare_exchange(ex.name, aio_pika.ExchangeType(ex.type), durable=True)
    for spec in topology.queues:
        await declare_queue(channel, spec)
