"""The worker: its lifecycle (start, run, drain, close), the way each delivery
takes through it (dispatch), turning a delivery into an outcome (processing),
carrying the outcome out (settlement), crash isolation (suspects), the threads of
sync handlers and the blocked-loop watchdog."""

from .lifecycle import Worker

__all__ = ["Worker"]
