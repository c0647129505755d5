"""Settings: one pydantic settings object, read from keyword arguments and
`RABBITWORKER_<NAME>` environment variables when an app starts, never at import."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_URL", "Settings", "first_error"]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


class Settings(BaseSettings):
    """Every tuning value; each has a `RABBITWORKER_<NAME>` variable.

    The README's configuration reference lists them with their defaults.
    """

    model_config = SettingsConfigDict(env_prefix="RABBITWORKER_", extra="forbid")

    url: str = DEFAULT_URL
    app: str | None = None  # `module:attribute` for the CLI's --app
    prefetch: int = Field(100, ge=1, le=65535)
    concurrency: int = Field(100, ge=1)
    connect_timeout: float = Field(10.0, gt=0)
    publish_timeout: float = Field(30.0, gt=0)
    heartbeat: int = Field(60, ge=0)
    grace: float = Field(30.0, ge=0)
    max_message_size: int = Field(16 * 1024 * 1024, ge=1)
    queue_type: Literal["quorum", "classic"] = "quorum"
    delivery_limit: int = Field(20, ge=1)
    max_abandoned_threads: int = Field(100, ge=1)
    blocked_loop_warning: float = Field(1.0, ge=0)
    results: str | None = None  # results store URL: redis://, postgresql://, memory://
    results_ttl: float = Field(24 * 3600.0, gt=0)
    max_result_size: int = Field(1024 * 1024, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_bodies: bool = False
    metrics_port: int | None = Field(None, ge=0, le=65535)  # `run` serves /metrics
    health_port: int | None = Field(None, ge=0, le=65535)  # `run` serves /healthz, /readyz


def first_error(exc: ValueError) -> str:
    """The first problem a validation error names, as `field: message`."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        return f"{where}: {first.get('msg', exc)}"
    return str(exc).splitlines()[0]
