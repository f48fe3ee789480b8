"""Clocks: the wall clock for live machines, a manual one for simulations and tests.

Everything that ages (telemetry, wear, deadlines) reads time from a ``Clock`` it is given, so a
simulated day runs in milliseconds and a test can step time exactly.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ScaledClock", "SimClock", "WallClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware (UTC)."""
        ...


class WallClock:
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimClock:
    """Time that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("SimClock needs a timezone-aware start time")

    def now(self) -> datetime:
        return self._now

    def advance(self, *, hours: float = 0.0, seconds: float = 0.0) -> datetime:
        if hours < 0 or seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += timedelta(hours=hours, seconds=seconds)
        return self._now


class ScaledClock:
    """Simulated time that runs ``speed`` times faster than real time, for a market that lives a day
    in a minute while real messages cross a real broker. Timers wait ``real_seconds(hours)``."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("a clock's speed must be positive")
        self.speed = speed
        self.start = start or datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
        if self.start.tzinfo is None:
            raise ValueError("ScaledClock needs a timezone-aware start time")
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    def hours(self) -> float:
        """Simulated hours since the start."""
        return (time.monotonic() - self._t0) * self.speed / 3600

    def real_seconds(self, hours: float) -> float:
        """How long ``hours`` of simulated time take in real seconds."""
        return hours * 3600 / self.speed
