"""Messages in flight between the hubs of one process, for a virtual clock.

A virtual clock may jump only when no message published is still on its way to a local
subscriber. Every hub on that clock registers here; a publish holds the clock once for each local
hub with a subscription the broker has confirmed that matches the topic, and the hold is released
when the message arrives there (after it was queued for its round) or when that hub stops
listening for it. A subscription counts once the broker has confirmed it with its SUBACK, which
the clock waits for. The retained messages the subscription matches are owed to it too (the
tracker keeps the newest retained payload each local hub published on a topic): the broker sends
them after the SUBACK, and the clock waits for them either way.

On a real clock there is nothing to track: ``flights(clock)`` is a no-op then.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import defaultdict
from typing import Protocol

from paho.mqtt.client import topic_matches_sub

from core.clock import Hold, Timeline

__all__ = ["Flights", "Listener", "digest", "flights"]


class Listener(Protocol):
    """A hub as the tracker sees it."""

    name: str

    def listens(self, topic: str) -> bool:
        """A confirmed subscription matches ``topic``."""
        ...


def digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=12).digest()


class Flights:
    """The local hubs of one virtual clock and the deliveries each one is still owed."""

    def __init__(self, clock: Timeline) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._hubs: list[Listener] = []
        self._owed: dict[tuple[int, bytes], list[tuple[str, Hold]]] = defaultdict(list)
        self._retained: dict[str, bytes] = {}
        """The newest retained payload published on each topic by a local hub."""

    def join(self, hub: Listener) -> None:
        with self._lock:
            self._hubs.append(hub)

    def leave(self, hub: Listener) -> None:
        with self._lock:
            self._hubs = [h for h in self._hubs if h is not hub]
            gone = [k for k in self._owed if k[0] == id(hub)]
            holds = [h for k in gone for _, h in self._owed.pop(k)]
        for hold in holds:
            hold.release()

    def sent(self, topic: str, payload: bytes, what: str, *, retain: bool = False) -> None:
        """``payload`` goes out on ``topic``: hold the clock for each local hub it must reach. A
        retained one is kept: the broker hands it to every later subscription too."""
        with self._lock:
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            hubs = [h for h in self._hubs if h.listens(topic)]
            if not hubs:
                return
            key = digest(payload)
            for hub in hubs:
                self._owed[(id(hub), key)].append((topic, self.clock.hold(f"message {what} on {topic} to {hub.name}")))

    def subscribing(self, hub: Listener, pattern: str) -> None:
        """``hub`` asks for ``pattern``: the broker will hand it the retained messages that match,
        when it likes (after the SUBACK): hold the clock for each."""
        with self._lock:
            for topic, payload in self._retained.items():
                if topics_match(pattern, topic):
                    self._owed[(id(hub), digest(payload))].append(
                        (topic, self.clock.hold(f"retained message on {topic} to {hub.name}")))

    def arrived(self, hub: Listener, payload: bytes) -> Hold | None:
        """The hold of a message that reached ``hub`` (the caller releases it once the message is
        queued for its round); None if the hub was not owed it (a retained or repeated one)."""
        with self._lock:
            owed = self._owed.get((id(hub), digest(payload)))
            if not owed:
                return None
            _, hold = owed.pop(0)
            if not owed:
                del self._owed[(id(hub), digest(payload))]
            return hold

    def unheard(self, hub: Listener) -> None:
        """``hub`` stopped listening to some topics: what it is owed there may never come."""
        with self._lock:
            dropped: list[tuple[str, Hold]] = []
            for key in [k for k in self._owed if k[0] == id(hub)]:
                keep: list[tuple[str, Hold]] = []
                for topic, hold in self._owed[key]:
                    (keep if hub.listens(topic) else dropped).append((topic, hold))
                if keep:
                    self._owed[key] = keep
                else:
                    del self._owed[key]
        for _, hold in dropped:
            hold.release()


class _NoFlights(Flights):
    def join(self, hub: Listener) -> None:
        return None

    def leave(self, hub: Listener) -> None:
        return None

    def sent(self, topic: str, payload: bytes, what: str, *, retain: bool = False) -> None:
        return None

    def subscribing(self, hub: Listener, pattern: str) -> None:
        return None

    def arrived(self, hub: Listener, payload: bytes) -> Hold | None:
        return None

    def unheard(self, hub: Listener) -> None:
        return None


_BY_CLOCK: weakref.WeakKeyDictionary[object, Flights] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def flights(clock: Timeline) -> Flights:
    """The tracker shared by every hub on ``clock`` (a no-op one on a real clock)."""
    if not clock.virtual:
        return _NoFlights(clock)
    with _GUARD:
        tracker = _BY_CLOCK.get(clock)
        if tracker is None:
            tracker = _BY_CLOCK[clock] = Flights(clock)
        return tracker


def topics_match(pattern: str, topic: str) -> bool:
    return pattern == topic or (("+" in pattern or "#" in pattern) and topic_matches_sub(pattern, topic))
