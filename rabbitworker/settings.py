"""Settings: one pydantic settings object read from `RABBITWORKER_*` environment
variables when an app starts (never at import), and URL masking for logs."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_URL", "Settings", "mask_url"]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


class Settings(BaseSettings):
    """Tuning values, from keyword arguments or `RABBITWORKER_<NAME>` variables."""

    model_config = SettingsConfigDict(env_prefix="RABBITWORKER_", extra="ignore")

    url: str = DEFAULT_URL
    app: str | None = None
    prefetch: int = Field(100, ge=1, le=65535)
    concurrency: int = Field(100, ge=1)
    connect_timeout: float = Field(10.0, gt=0)
    publish_timeout: float = Field(30.0, gt=0)
    heartbeat: int = Field(60, ge=0)
    grace: float = Field(30.0, ge=0)
    max_message_size: int = Field(16 * 1024 * 1024, ge=1)
    queue_type: Literal["quorum", "classic"] = "quorum"
    delivery_limit: int = Field(20, ge=1)
    log_level: str = "INFO"


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, safe to log or print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
