"""Logging setup for the CLI (human-readable lines, or one JSON object per line
with `--log-format json`), the `MessageLog` middleware that logs each handled
message, and the masking that keeps the broker password out of every log line and
error message, whoever wrote it."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from .middleware.base import OUTCOME_NAMES, Middleware, Settled
from .urls import url_secrets
from .wire import attempt_of

if TYPE_CHECKING:
    from .context import Context

__all__ = [
    "MESSAGE_FIELDS",
    "JsonFormatter",
    "LogFormat",
    "MaskPassword",
    "MessageLog",
    "hide_password",
    "mask_secrets",
    "setup_logging",
]

LogFormat = Literal["text", "json"]
# The fields a handled message's line carries (`extra=` of its log record).
MESSAGE_FIELDS = ("message_id", "queue", "type", "attempt", "duration", "outcome", "error", "body")
MAX_BODY_CHARS = 4096

_secrets: set[str] = set()


def hide_password(url: str) -> None:
    """Mask this URL's password from now on, as written and percent-decoded
    (client libraries report either form)."""
    _secrets.update(url_secrets(url))


def mask_secrets(text: str) -> str:
    """`text` with every password given to `hide_password` replaced by `***`."""
    # Longest first, so a password that contains another is masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class MaskPassword(logging.Filter):
    """Replaces hidden passwords in the formatted message and its traceback."""

    def __init__(self, password: str | None = None) -> None:
        super().__init__()
        if password:
            _secrets.add(password)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        masked = mask_secrets(text)
        if masked != text:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields of a
    handled message when the record has them, and the traceback as `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in MESSAGE_FIELDS:
            if name in record.__dict__:
                value = record.__dict__[name]
                out[name] = mask_secrets(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_info"] = mask_secrets(record.exc_text)
        return json.dumps(out, default=str)


class MessageLog(Middleware):
    """Logs one line per handled message (logger `rabbitworker.messages`) with its
    id, queue, type, attempt, duration and outcome; its body only if `bodies`."""

    def __init__(self, *, level: int = logging.INFO, bodies: bool = False) -> None:
        self.log = logging.getLogger("rabbitworker.messages")
        self.level = level
        self.bodies = bodies

    async def on_settle(self, ctx: Context | None, settled: Settled) -> None:
        if not self.log.isEnabledFor(self.level):
            return
        delivery = settled.delivery
        fields: dict[str, object] = {
            "message_id": delivery.message_id,
            "queue": settled.queue,
            "type": delivery.type,
            "attempt": attempt_of(delivery.headers),
            "duration": None if settled.duration is None else round(settled.duration, 6),
            "outcome": OUTCOME_NAMES[settled.kind],
        }
        if settled.error is not None:
            fields["error"] = f"{type(settled.error).__name__}: {settled.error}"
        if self.bodies:
            fields["body"] = delivery.body[:MAX_BODY_CHARS].decode("utf-8", "replace")
        took = "" if settled.duration is None else f", {settled.duration:.3f} s"
        self.log.log(
            self.level,
            "message %s on %s: %s (attempt %d%s)",
            delivery.message_id,
            settled.queue,
            fields["outcome"],
            fields["attempt"],
            took,
            extra=fields,
        )


def setup_logging(level: str, url: str, *, fmt: LogFormat = "text") -> None:
    """Log to stderr at `level`, as text lines or JSON objects, with `url`'s
    password masked."""
    hide_password(url)
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskPassword())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # rabbitworker reports connection trouble itself, once and in its own words.
        logging.getLogger("aio_pika").setLevel(logging.ERROR)
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
