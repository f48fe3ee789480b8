"""A mailbox: one thread that runs an agent's messages and timers one at a time, in order.

The MQTT network thread only verifies envelopes and drops them into mailboxes, so an agent's
state is touched by one thread and needs no locks, and a slow step (a ledger write) delays that
agent alone. Several agents may share one mailbox when their steps are cheap.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Mailbox", "Timer"]

log = logging.getLogger("tamc.mailbox")


class Timer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Mailbox:
    def __init__(self, name: str = "mailbox") -> None:
        self.name = name
        self.errors = 0
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Timer, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` on the mailbox thread as soon as it is free."""
        return self.call_later(0.0, fn, *args)

    def call_later(self, delay_s: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Run ``fn(*args)`` after ``delay_s`` real seconds unless the returned timer is cancelled."""
        timer = Timer()
        with self._cond:
            if self._closed:
                return timer
            heapq.heappush(self._heap, (time.monotonic() + max(delay_s, 0.0), next(self._seq), timer, fn, args))
            self._cond.notify()
        return timer

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
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
        return box.get("value")

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the work already due; pending timers are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, timer, fn, args = heapq.heappop(self._heap)
                        break
                    if self._closed:
                        return
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
            if timer.cancelled:
                continue
            try:
                fn(*args)
            except Exception:
                self.errors += 1
                log.exception("mailbox=%s step failed fn=%s", self.name, getattr(fn, "__qualname__", fn))
