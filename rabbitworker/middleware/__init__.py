"""Middleware: the hooks cross-cutting behaviour plugs into, and the middleware
rabbitworker ships (retries, de-duplication)."""

from .base import Middleware, Outcome, PublishHooks, Settled
from .dedup import Deduplicate, DedupStore, MemoryDedupStore
from .retries import Retries

__all__ = [
    "DedupStore",
    "Deduplicate",
    "MemoryDedupStore",
    "Middleware",
    "Outcome",
    "PublishHooks",
    "Retries",
    "Settled",
]
