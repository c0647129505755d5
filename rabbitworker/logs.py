"""Logging setup for the CLI, and the masking that keeps the broker password out of
every log line and error message, whoever wrote it."""

from __future__ import annotations

import logging

from .urls import url_secrets

__all__ = ["MaskPassword", "hide_password", "mask_secrets", "setup_logging"]

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


def setup_logging(level: str, url: str) -> None:
    hide_password(url)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskPassword())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # rabbitworker reports connection trouble itself, once and in its own words.
        logging.getLogger("aio_pika").setLevel(logging.ERROR)
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
