"""The time a run reads and sleeps on: monotonic for waits, UTC for what people read.

Both are injected into the scheduler, so tests run without sleeping and know the time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

import anyio


class Clock(Protocol):
    """Monotonic time and sleeping, replaceable in tests."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds``."""


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep(seconds)``."""
        await anyio.sleep(seconds)


def utc_now() -> datetime:
    """The wall-clock time, in UTC: when a rest ends, as the log says it."""
    return datetime.now(UTC)
