"""Between rabbitworker's `Properties` and the AMQP client's: one conversion each
way, so the rest of the package never sees the client library's types."""

from __future__ import annotations

from pamqp.commands import Basic

from ..wire import Properties
from .headers import WireProperties

__all__ = ["from_amqp", "to_amqp"]


def to_amqp(p: Properties) -> Basic.Properties:
    """The client library's properties for `p`; header values keep their AMQP types
    (see `headers`)."""
    return WireProperties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        headers=p.headers,
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=p.expiration,
        message_id=p.message_id,
        timestamp=p.timestamp,
        message_type=p.type,
        user_id=p.user_id,
        app_id=p.app_id,
    )


def from_amqp(p: Basic.Properties) -> Properties:
    """rabbitworker's properties for what the broker delivered."""
    return Properties(
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        headers=dict(p.headers) if p.headers else {},
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=p.expiration,
        message_id=p.message_id,
        timestamp=p.timestamp,
        type=p.message_type,
        user_id=p.user_id,
        app_id=p.app_id,
    )
