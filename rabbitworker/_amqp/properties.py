"""Between rabbitworker's `Properties` and the AMQP client's: one conversion each
way, so the rest of the package never sees the client library's types."""

from __future__ import annotations

from pamqp import frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from ..wire import Properties
from .headers import WireProperties

__all__ = ["from_amqp", "through_the_wire", "to_amqp"]


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


def through_the_wire(p: Properties) -> Properties:
    """What a consumer receives for properties published as `p`: encoded into a
    content header frame and decoded again, as the broker passes them on (header
    values keep their AMQP types, the timestamp its whole seconds). Raises
    `HeaderError` for a header AMQP cannot carry. The in-memory broker's fidelity
    rests on it."""
    raw = frame.marshal(ContentHeader(0, 0, to_amqp(p)), 1)
    _, _, header = frame.unmarshal(raw)
    assert isinstance(header, ContentHeader)
    return from_amqp(header.properties)
