"""What time it is, asked in one way.

The store's processes read the system clock (``SYSTEM_CLOCK``). Whatever waits for time to
pass (a file's grace period, a relaunch delay, the central database's back-off, the lag alert)
takes a clock, so a test sets one (``ManualClock``) instead of sleeping until it has passed.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, tzinfo


class Clock:
    """The system clock."""

    def time(self) -> float:
        """Seconds since the epoch, as ``time.time()``."""
        return time.time()

    def now(self, tz: tzinfo = UTC) -> datetime:
        return datetime.fromtimestamp(self.time(), tz)


SYSTEM_CLOCK = Clock()


class ManualClock(Clock):
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: float | None = None):
        self._at = time.time() if start is None else start

    def time(self) -> float:
        return self._at

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self._at += seconds
