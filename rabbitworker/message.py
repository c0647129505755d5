"""Typed messages: `TaskMessage`, its routing key and reply type, and the
wire encoding shared by every publisher and the worker."""

from __future__ import annotations

from typing import Any, ClassVar, Generic

from pydantic import BaseModel, TypeAdapter, ValidationError
from typing_extensions import TypeVar

from .errors import ConfigurationError, DecodeError

__all__ = ["R", "TaskMessage", "decode_body", "encode_reply", "reply_adapter"]

R = TypeVar("R", default=Any)


class TaskMessage(BaseModel, Generic[R]):
    """Base class of every message; subclasses name their routing key.

    ``class RenderReport(TaskMessage[ReportReady], routing_key="reports.render")``
    declares the message type and the type of its RPC reply.
    """

    routing_key: ClassVar[str] = ""

    def __init_subclass__(cls, routing_key: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if routing_key is not None:
            if not routing_key or any(c in routing_key for c in "*# "):
                raise ConfigurationError(
                    f"{cls.__name__}: routing_key must be a non-empty key without "
                    f"wildcards or spaces, got {routing_key!r}"
                )
            cls.routing_key = routing_key

    @classmethod
    def reply_type(cls) -> Any:
        """The declared reply type (`R` of `TaskMessage[R]`), or `Any` when none is."""
        for klass in cls.__mro__:
            meta = getattr(klass, "__pydantic_generic_metadata__", None)
            if meta and meta.get("origin") is TaskMessage and meta.get("args"):
                return meta["args"][0]
        return Any


_adapters: dict[Any, TypeAdapter[Any]] = {}


def reply_adapter(tp: Any) -> TypeAdapter[Any]:
    """A cached TypeAdapter for a reply type (building one per call is slow)."""
    try:
        return _adapters[tp]
    except KeyError:
        adapter = _adapters[tp] = TypeAdapter(tp)
        return adapter
    except TypeError:  # unhashable type expression
        return TypeAdapter(tp)


def decode_body(cls: type[BaseModel], body: bytes) -> BaseModel:
    """Validate a JSON body straight from bytes into `cls`; raises `DecodeError`."""
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0] if errors else {"msg": str(exc), "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        kind = "invalid JSON" if first.get("type") == "json_invalid" else "invalid message"
        raise DecodeError(
            f"{kind} for {cls.__name__}: {where}: {first['msg']} ({len(errors)} error(s))",
            body=body,
        ) from exc


def encode_reply(value: Any) -> bytes:
    """The JSON body of a handler's return value."""
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    return reply_adapter(type(value)).dump_json(value)
