"""Clocks: the time agents read and the timeline their timers run on.

Every agent reads time and sets timers only through the clock it is given, so the same node,
requester and life cycle run on any of them:

- ``WallClock``: real time (``tamc agent`` on a machine's own computer);
- ``ScaledClock``: market time that runs ``speed`` times faster than real time (``tamc serve``,
  so the cockpit moves); a node in its own process follows the market it hears (``follow``);
- ``VirtualClock`` (``core.virtual``): time that advances only when the city has nothing left to do
  at the current instant (``tamc demo``, the benchmarks, the eval market, the tests' cities);
- ``SimClock``: time that moves only when a test says so (drivers, governance windows).

A timer's delay is in seconds of the clock's own time. A clock is also the ``Timeline`` a mailbox
waits on: the real clocks turn a due time into real seconds to wait; the virtual one wakes the
mailbox when it jumps. The accounting hooks (``add_work``, ``hold``, ``deliver``…) let a virtual
clock know when the city is quiescent; on the real clocks they cost nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "Hold", "MarketAnchor", "RealTime", "ScaledClock", "SimClock", "Timeline", "Waiter", "WallClock"]

DEFAULT_START = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
RESYNC_AFTER_S = 60.0
"""How far (real seconds at the market's pace) a market heard may be from a following clock before it re-anchors."""
MAX_REAL_WAIT_S = 0.25
"""A mailbox on a real clock re-reads its next timer at least this often (a clock that follows a
market may change its rate)."""


class Clock(Protocol):
    """What reads time: drivers, governance windows, memory records."""

    def now(self) -> datetime:
        """Current time on this clock, timezone-aware (UTC)."""
        ...


class Hold(Protocol):
    """Background work a virtual clock waits for (a message in flight, a model call)."""

    def release(self) -> None: ...


class Waiter(Protocol):
    """What a clock asks of a mailbox waiting on it (``core.mailbox.Mailbox`` is one): a virtual
    clock releases due timers when it jumps, and reports what a stalled mailbox is doing."""

    name: str

    def next_due(self) -> float | None: ...
    def release_due(self, now: float) -> int: ...
    def doing(self) -> str | None: ...


class Timeline(Clock, Protocol):
    """A clock agents set timers on. ``speed`` is market seconds per real second: how fast the
    clock runs against the wall, and how much market time a piece of real work is charged."""

    speed: float
    virtual: bool
    step: int
    """A virtual clock's count of steps (``hub.flight``); 0 on a real one."""

    def time(self) -> float:
        """Seconds since the epoch on this clock."""
        ...

    def ms(self) -> int:
        """Milliseconds since the epoch on this clock (what the protocol's timestamps are in)."""
        ...

    def wait_s(self, due: float) -> float | None:
        """Real seconds a mailbox waits for a timer due at ``due``; None: until the clock wakes it."""
        ...

    def attach(self, box: Waiter) -> None: ...
    def detach(self, box: Waiter) -> None: ...
    def add_work(self, n: int = 1) -> None: ...
    def work_done(self, n: int = 1) -> None: ...
    def hold(self, what: str) -> Hold: ...

    def deliver(self, key: tuple[str, ...], resolve: Callable[[], Callable[[], object] | None]) -> None:
        """Hand out a received message: ``resolve()`` picks who gets it and returns what hands it
        to them. On a real clock both run now; on a virtual clock every message of a round is
        resolved while nothing else runs, then handed out in the canonical order of ``key``."""
        ...

    def charge(self, real_s: float) -> float:
        """Market seconds still to wait for work that took ``real_s`` real seconds (a model's
        answer): none on a real clock (the time has passed), ``real_s × speed`` on a virtual one."""
        ...

    def follow(self, market_ms: int, speed: float) -> None:
        """Keep time with a market heard at ``market_ms`` running at ``speed`` (a no-op unless the
        clock can be set)."""
        ...


class _NoHold:
    __slots__ = ()

    def release(self) -> None:
        return None


_NO_HOLD = _NoHold()


class RealTime:
    """The hooks of a clock tied to real time: timers wait real seconds, nothing is counted."""

    speed: float = 1.0
    virtual = False
    step = 0

    def time(self) -> float:  # pragma: no cover - every real clock defines it
        raise NotImplementedError

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def ms(self) -> int:
        return round(self.time() * 1000)

    def wait_s(self, due: float) -> float | None:
        return min((due - self.time()) / self.speed, MAX_REAL_WAIT_S)

    def attach(self, box: Waiter) -> None:
        return None

    def detach(self, box: Waiter) -> None:
        return None

    def add_work(self, n: int = 1) -> None:
        return None

    def work_done(self, n: int = 1) -> None:
        return None

    def hold(self, what: str) -> Hold:
        return _NO_HOLD

    def deliver(self, key: Hashable, resolve: Callable[[], Callable[[], object] | None]) -> None:
        hand_out = resolve()
        if hand_out is not None:
            hand_out()

    def charge(self, real_s: float) -> float:
        return 0.0

    def follow(self, market_ms: int, speed: float) -> None:
        return None


class WallClock(RealTime):
    """Real time."""

    def time(self) -> float:
        return time.time()

    def now(self) -> datetime:
        return datetime.now(UTC)


class ScaledClock(RealTime):
    """Market time that runs ``speed`` times faster than real time, for a market that lives a day
    in a minute while real messages cross a real broker."""

    def __init__(self, speed: float, start: datetime | None = None, *,
                 on_follow: Callable[[MarketAnchor], None] | None = None) -> None:
        if speed <= 0:
            raise ValueError("a clock's speed must be positive")
        self.start = start or DEFAULT_START
        if self.start.tzinfo is None:
            raise ValueError("ScaledClock needs a timezone-aware start time")
        self._lock = threading.Lock()
        self.speed = speed
        self._base = self.start.timestamp()
        self._t0 = time.monotonic()
        self.on_follow = on_follow
        """Told the new anchor when the clock takes a market's time (to keep it across a restart)."""

    def time(self) -> float:
        return self._base + (time.monotonic() - self._t0) * self.speed

    def hours(self) -> float:
        """Market hours since the start."""
        return (self.time() - self.start.timestamp()) / 3600

    def follow(self, market_ms: int, speed: float) -> None:
        """Take the time of a market heard at ``market_ms`` running at ``speed`` (a node in its own
        process keeps the time of the market whose calls it answers): when the pace changes, or
        the market is a minute (real) away from this clock — another market, or a restart's anchor
        gone stale; calls in step with it do not move it (the anchor is off by one message's trip).
        Whoever publishes the first call at a new pace sets it (the broker does not yet fence who may)."""
        if speed <= 0:
            return
        with self._lock:
            if speed == self.speed and abs(self.time() - market_ms / 1000) < RESYNC_AFTER_S * speed:
                return
            self._base, self._t0, self.speed = market_ms / 1000, time.monotonic(), speed
        if self.on_follow is not None:
            self.on_follow(self.anchor())

    def anchor(self) -> MarketAnchor:
        """Where the clock stands against the wall: enough to rebuild it in another process."""
        with self._lock:
            return MarketAnchor(market_s=self.time(), wall_s=time.time(), speed=self.speed)

    @classmethod
    def resume(cls, anchor: MarketAnchor, **options: Callable[[MarketAnchor], None] | None) -> ScaledClock:
        """The clock an ``anchor`` was taken from, as it reads now (a restarted node keeps the market's time)."""
        clock = cls(anchor.speed, **options)  # type: ignore[arg-type]
        clock._base = anchor.market_s + (time.time() - anchor.wall_s) * anchor.speed
        return clock


@dataclass(frozen=True)
class MarketAnchor:
    """A market's time at a wall-clock instant, and its pace."""

    market_s: float
    wall_s: float
    speed: float


class SimClock:
    """Time that moves only when told to (tests of drivers and governance windows)."""

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
