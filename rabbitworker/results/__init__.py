"""The results backend: where workers leave the status and result of tracked
messages, so any process can read them by message id."""

from .memory import MemoryResultStore
from .status import ErrorInfo, State, TaskStatus, WorkerInfo
from .store import ResultStore, open_store

__all__ = [
    "ErrorInfo",
    "MemoryResultStore",
    "ResultStore",
    "State",
    "TaskStatus",
    "WorkerInfo",
    "open_store",
]
