"""Stored times as people read them (the store keeps wall-clock nanoseconds)."""
import time


def local_minute(wall_ns: int | float) -> str:
    """A stored wall-clock time as people read it: local date, hours and minutes."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(wall_ns / 1e9))
