"""Injected sources of non-determinism: clocks and id factories."""

from __future__ import annotations

import os
import time
from typing import Protocol


class Clock(Protocol):
    """What the core needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and limits)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (for records people read)."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class IdFactory(Protocol):
    def __call__(self, prefix: str) -> str: ...


def random_id(prefix: str) -> str:
    """A 96-bit random identifier such as ``sess_5f0c…``."""
    return f"{prefix}_{os.urandom(12).hex()}"
