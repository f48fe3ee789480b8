"""Virtual time: a simulated city's clock, which waits for the work instead of the CPU.

Time advances only when the city is quiescent: no mailbox has work due now or running, no message
published is still on its way to a local subscriber, and no background work (a model call, a
subscription being set up) is pending. Then it jumps to the next timer. So a bid window is a window
of market time however long the machines take to think, and a seeded day replays exactly.

Within one instant the order is canonical, so thread scheduling cannot change an outcome:

1. timers due at the instant are released one mailbox at a time, by the mailbox's name (then the
   order it was made in), each mailbox's timers in the order they were set;
2. what follows from them runs in rounds: every message received in a round waits until the
   city is quiescent, then all of them are handed out sorted by (topic, sender, id), and the next
   round begins. A round's mailboxes run at once; each one's inputs arrive in a fixed order.

Each release and each round is a step (``step``), and so is what the caller does between two runs:
nothing is handed out then, so the caller acts alone (to see a message handled it runs the clock).
A hub's subscription takes effect at the end of its step (``hub.flight``).

What still decides an outcome by thread timing is only what two actors do to shared state in the
same round without a message between them (the ledger's balances); the city has none of that on
its bidding path.

A real-time watchdog guards each run: when nothing has moved for ``watchdog_s`` real seconds while
work is pending, ``run`` raises ``SimulationStalled`` naming what was still in flight. It never
decides an outcome, it only stops a run that would hang.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.clock import DEFAULT_START, Waiter
from core.errors import SimulationStalled

__all__ = ["VirtualClock"]

log = logging.getLogger("tamc.clock")


class _Hold:
    __slots__ = ("_clock", "_id", "what")

    def __init__(self, clock: VirtualClock, hold_id: int, what: str) -> None:
        self._clock, self._id, self.what = clock, hold_id, what

    def release(self) -> None:
        self._clock._release(self._id)


class VirtualClock:
    """Market time that moves only when the city is quiescent (see the module's docstring)."""

    virtual = True

    def __init__(self, start: datetime | None = None, *, speed: float = 3600.0, watchdog_s: float = 60.0) -> None:
        self.start = start or DEFAULT_START
        if self.start.tzinfo is None:
            raise ValueError("VirtualClock needs a timezone-aware start time")
        if speed <= 0:
            raise ValueError("a clock's speed must be positive")
        self.speed = speed
        """Market seconds charged per real second of work that takes real time (a model's answer)."""
        self.watchdog_s = watchdog_s
        self._t = self.start.timestamp()
        self._cond = threading.Condition()
        self._work = 0
        self._boxes: list[tuple[str, int, Waiter]] = []
        self._made = itertools.count()
        self._arrivals: list[tuple[tuple[str, ...], Callable[[], Callable[[], object] | None]]] = []
        self._holds: dict[int, str] = {}
        self._hold_ids = itertools.count()
        self._horizon = self._t
        self._until: Callable[[], bool] | None = None
        self._reached = True
        self._progress = 0
        self._closed = False
        self._error: BaseException | None = None
        self.step = 0
        """Counts the steps (``hub.flight``): a round handed out, a mailbox's timers released, and
        what the caller does between two runs. A subscription takes effect after its step."""
        self.stats: Counter[str] = Counter()
        """jumps (time moved), releases (a mailbox's timers handed out), rounds and messages (handed out)."""
        self._thread = threading.Thread(target=self._advance, name="virtual-clock", daemon=True)
        self._thread.start()

    # -- reading time ---------------------------------------------------------------------------

    def time(self) -> float:
        return self._t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._t, UTC)

    def ms(self) -> int:
        return round(self._t * 1000)

    def hours(self) -> float:
        """Market hours since the start."""
        return (self._t - self.start.timestamp()) / 3600

    # -- the timeline mailboxes wait on ---------------------------------------------------------

    def wait_s(self, due: float) -> float | None:
        return None  # a timer is released by the clock when it jumps

    def attach(self, box: Waiter) -> None:
        with self._cond:
            self._boxes.append((box.name, next(self._made), box))
            self._boxes.sort(key=lambda b: (b[0], b[1]))

    def detach(self, box: Waiter) -> None:
        with self._cond:
            self._boxes = [b for b in self._boxes if b[2] is not box]

    def add_work(self, n: int = 1) -> None:
        with self._cond:
            self._work += n

    def work_done(self, n: int = 1) -> None:
        with self._cond:
            self._work -= n
            self._progress += 1
            if self._work <= 0:
                self._cond.notify_all()

    def hold(self, what: str) -> _Hold:
        with self._cond:
            hold_id = next(self._hold_ids)
            self._holds[hold_id] = what
            self._work += 1
        return _Hold(self, hold_id, what)

    def _release(self, hold_id: int) -> None:
        with self._cond:
            if self._holds.pop(hold_id, None) is None:
                return  # released twice
            self._work -= 1
            self._progress += 1
            if self._work <= 0:
                self._cond.notify_all()

    def deliver(self, key: tuple[str, ...], resolve: Callable[[], Callable[[], object] | None]) -> None:
        with self._cond:
            if not self._closed:
                self._arrivals.append((key, resolve))
                return
        hand_out = resolve()
        if hand_out is not None:
            hand_out()

    def charge(self, real_s: float) -> float:
        return max(real_s, 0.0) * self.speed

    def follow(self, market_ms: int, speed: float) -> None:
        return None

    # -- running -------------------------------------------------------------------------------

    def run(self, until: datetime | float | None = None, *, stop: Callable[[], bool] | None = None,
            watchdog_s: float | None = None) -> datetime:
        """Let time advance to ``until`` (a datetime or epoch seconds; None: as far as there are
        timers), or until ``stop()`` is true at a quiescent instant, whichever comes first; return
        the time reached. ``stop`` runs on the clock's thread while nothing else runs: it reads
        state, it must not wait for a mailbox. Raises ``SimulationStalled`` when nothing moves for
        the watchdog's real seconds while work is pending."""
        horizon = float("inf") if until is None else until.timestamp() if isinstance(until, datetime) else float(until)
        limit = self.watchdog_s if watchdog_s is None else watchdog_s
        with self._cond:
            if self._closed:
                raise RuntimeError("the virtual clock is closed")
            self._horizon, self._until, self._reached, self._error = max(horizon, self._t), stop, False, None
            self._cond.notify_all()
            seen, since = self._progress, time.monotonic()
            while not self._reached:
                self._cond.wait(0.25)
                if self._error is not None:
                    raise self._error
                if self._progress != seen:
                    seen, since = self._progress, time.monotonic()
                elif self._work > 0 and time.monotonic() - since > limit:
                    self._horizon, self._until = self._t, None
                    raise SimulationStalled(self._stalled(limit))
            self._horizon, self._until = self._t, None
            return self.now()

    def settle(self, *, watchdog_s: float | None = None) -> None:
        """Run what is due at the current instant, without moving time."""
        self.run(self._t, watchdog_s=watchdog_s)

    def close(self) -> None:
        """Stop the clock: timers never fire again; messages are handed out as they come."""
        with self._cond:
            self._closed = True
            arrivals, self._arrivals = self._arrivals, []
            self._cond.notify_all()
        for _, resolve in sorted(arrivals, key=lambda a: a[0]):
            hand_out = resolve()
            if hand_out is not None:
                hand_out()
        self._thread.join(timeout=5)

    def in_flight(self) -> list[str]:
        """What the clock is waiting for now: busy mailboxes and pending background work."""
        with self._cond:
            boxes = [b for _, _, b in self._boxes]
            holds = sorted(self._holds.values())
        busy = [f"mailbox {b.name}: {what}" for b in boxes if (what := b.doing())]
        return busy + holds

    def _stalled(self, limit: float) -> str:
        pending = self.in_flight()
        shown = "; ".join(pending[:12]) + (f"; and {len(pending) - 12} more" if len(pending) > 12 else "")
        return (f"the simulated city stalled at {self.now():%Y-%m-%d %H:%M:%S} market time: nothing moved for {limit:g} real "
                f"seconds while {self._work} pieces of work were pending — still in flight: {shown or 'nothing named'}")

    def _advance(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # handed to the run that waits
            log.exception("virtual clock failed")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                if self._work > 0 or self._reached:  # between runs the caller acts alone: nothing is handed out
                    cond.wait()
                    continue
                if self._arrivals:  # a round: every message of it, in the canonical order
                    batch = sorted(self._arrivals, key=lambda a: a[0])
                    self._arrivals = []
                    self.step += 1
                    self.stats["rounds"] += 1
                    self.stats["messages"] += len(batch)
                    self._work += 1  # nothing looks quiescent while the round is handed out
                    hand_outs = [resolve() for _, resolve in batch]  # who gets what, decided while nothing runs
                    cond.release()
                    try:
                        for hand_out in hand_outs:
                            if hand_out is not None:
                                hand_out()
                    finally:
                        cond.acquire()
                        self._work -= 1
                        self._progress += 1
                    continue
                if self._until is not None and self._until():
                    self._end_run()
                    continue
                due, box = self._next()
                if box is None or due > self._horizon:
                    if self._horizon != float("inf") and self._horizon > self._t and (box is None or due > self._horizon):
                        self._t = self._horizon  # the run ends at its horizon, not at the last timer before it
                    self._end_run()
                    continue
                if due > self._t:
                    self._t = due
                    self.stats["jumps"] += 1
                self.step += 1
                self.stats["releases"] += 1
                released = box.release_due(self._t)
                self._work += released
                self._progress += 1

    def _end_run(self) -> None:
        self._reached = True
        self.step += 1  # what the caller does next is a step of its own
        self._cond.notify_all()

    def _next(self) -> tuple[float, Any]:
        best: tuple[float, Any] = (float("inf"), None)
        for _, _, box in self._boxes:
            due = box.next_due()
            if due is not None and due < best[0]:
                best = (due, box)
        return best
