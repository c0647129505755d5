"""Logging setup for the CLI, with a filter that keeps the broker password out of
every log line, whoever wrote it."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

__all__ = ["MaskPassword", "setup_logging"]


class MaskPassword(logging.Filter):
    """Replaces a password in the formatted message with `***`."""

    def __init__(self, password: str) -> None:
        super().__init__()
        self.password = password

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.password in text:
            record.msg, record.args = text.replace(self.password, "***"), None
        return True


def setup_logging(level: str, url: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    password = urlsplit(url).password
    if password:
        handler.addFilter(MaskPassword(password))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # rabbitworker reports connection trouble itself, once and in its own words.
        logging.getLogger("aio_pika").setLevel(logging.WARNING)
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
