"""Schedules: messages published by cron or at fixed intervals, by one beat process
at a time, its leadership held on the broker."""

from .schedule import CatchUp, Schedule, Schedules, tick_id

__all__ = ["CatchUp", "Schedule", "Schedules", "tick_id"]
