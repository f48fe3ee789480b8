"""A mailbox: one thread that runs an agent's messages and timers one at a time, in order.

The MQTT network thread only verifies envelopes and drops them into mailboxes, so an agent's
state is touched by one thread and needs no locks, and a slow step (a ledger write) delays that
agent alone. Several agents may share one mailbox when their steps are cheap.

Timers run on the mailbox's clock (``core.clock``): a delay is in seconds of that clock's time.
On a real clock the thread waits the real seconds it takes; on a virtual clock the clock releases
due timers when it jumps, and every item the mailbox holds ready or runs counts as work the clock
waits for.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

from core.clock import Timeline, WallClock

__all__ = ["Mailbox", "Timer"]

log = logging.getLogger("tamc.mailbox")

_WALL = WallClock()
T = TypeVar("T")


class Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_Item = tuple[Timer, Callable[..., Any], tuple[Any, ...]]


class Mailbox:
    def __init__(self, name: str = "mailbox", *, clock: Timeline | None = None) -> None:
        self.name = name
        self.clock: Timeline = clock or _WALL
        self.errors = 0
        self._cond = threading.Condition()
        self._ready: deque[_Item] = deque()
        self._heap: list[tuple[float, int, _Item]] = []
        self._seq = itertools.count()
        self._closed = False
        self._running: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.clock.attach(self)
        self._thread.start()

    def post(self, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` on the mailbox thread as soon as it is free."""
        return self.call_later(0.0, fn, *args)

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` after ``delay_s`` seconds of the clock's time unless the returned timer is cancelled."""
        timer = Timer()
        item = (timer, fn, args)
        if delay_s <= 0:
            self.clock.add_work()  # counted before it can be seen: the clock never looks idle in between
            with self._cond:
                if not self._closed:
                    self._ready.append(item)
                    self._cond.notify()
                    return timer
            self.clock.work_done()
            return timer
        with self._cond:
            if not self._closed:
                heapq.heappush(self._heap, (self.clock.time() + delay_s, next(self._seq), item))
                if self._heap[0][2] is item:  # the thread waits for the earliest timer: wake it only for a new one
                    self._cond.notify()
        return timer

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``fn(*args)`` on the mailbox thread and wait for its result (at once if already on it,
        or if the mailbox is closed and its thread gone: nothing else touches the state any more)."""
        if threading.current_thread() is self._thread or (self._closed and not self._thread.is_alive()):
            return fn(*args)
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed back to the caller
                box["error"] = exc
            finally:
                done.set()

        self.post(run)
        if not done.wait(timeout):
            raise TimeoutError(f"mailbox {self.name} did not answer within {timeout} s")
        if "error" in box:
            raise box["error"]
        return cast(T, box.get("value"))

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the work already due; pending timers are dropped."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self.clock.detach(self)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- what a virtual clock asks (under its own lock) -------------------------------------------

    def next_due(self) -> float | None:
        """When the earliest live timer is due (cancelled ones are dropped on the way)."""
        with self._cond:
            heap = self._heap
            while heap and heap[0][2][0].cancelled:
                heapq.heappop(heap)
            return heap[0][0] if heap else None

    def release_due(self, now: float) -> int:
        """Make every timer due by ``now`` ready, in the order they were set; how many."""
        n = 0
        with self._cond:
            heap = self._heap
            while heap and heap[0][0] <= now:
                self._ready.append(heapq.heappop(heap)[2])
                n += 1
            if n:
                self._cond.notify()
        return n

    def doing(self) -> str | None:
        """What the mailbox is running or holds ready, for a stalled clock's report; None when idle."""
        with self._cond:
            ready = len(self._ready)
            running = self._running
        if running is None and not ready:
            return None
        return f"running {running}" + (f", {ready} more ready" if ready else "") if running else f"{ready} ready"

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while True:
                    if self._ready:
                        timer, fn, args = self._ready.popleft()
                        break
                    if self._closed:
                        return
                    wait = None
                    if self._heap:
                        wait = self.clock.wait_s(self._heap[0][0])
                        if wait is not None and wait <= 0:
                            self._ready.append(heapq.heappop(self._heap)[2])
                            self.clock.add_work()  # a real clock counts nothing; this keeps the books even
                            continue
                    cond.wait(wait)
                self._running = None if timer.cancelled else getattr(fn, "__qualname__", repr(fn))
            try:
                if not timer.cancelled:
                    fn(*args)
            except Exception:
                self.errors += 1
                log.exception("mailbox=%s step failed fn=%s", self.name, getattr(fn, "__qualname__", fn))
            finally:
                self._running = None
                self.clock.work_done()
