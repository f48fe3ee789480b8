"""Messages in flight between the hubs of one process, for a virtual clock.

A virtual clock moves in steps (``VirtualClock.step``): a round of messages handed out, one
mailbox's timers released, or what its caller does between two runs. Within a step things run at
once, so who gets a message must not depend on which thread was quicker. Every hub on the clock
registers here, and these are the rules:

- a subscription takes effect at the end of the step it is asked in (the clock waits for the
  broker's SUBACK, so the broker holds it by then);
- a message goes to each local hub whose subscription in effect matches it when it is sent: the
  clock is held until it arrives there, or until that hub stops listening for it;
- a new subscription gets the messages retained on the topics it matches as they stand at the end
  of its step, what a subscription asked just then would get; the clock waits for each. The broker
  sends one as a retained copy or, when the subscription reached it before the message did, as a
  live one: either counts;
- any other copy of a message a local hub sent is a stray (a live one that reached a subscription
  not yet in effect, a retained one since replaced, a repeat): it is dropped and counted. A message
  no local hub sent (a last will the broker publishes for a connection that died) is handed out in
  the next round.

The tracker keeps the newest retained payload each topic got from a local hub, and the digests of
the last ``REMEMBERED`` messages sent, to tell a stray from a stranger's message.

On a real clock there is nothing to track: ``flights(clock)`` is a no-op then.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal, Protocol

from paho.mqtt.client import topic_matches_sub

from core.clock import Hold, Timeline

__all__ = ["Arrival", "Flights", "Listener", "digest", "flights"]

REMEMBERED = 1 << 17
"""Messages sent whose digest is kept, to know a late stray copy for one of ours."""

Arrival = Literal["owed", "retained", "stray", "foreign"]
"""What a copy that reached a hub is: owed to it live, the retained state its new subscription is
owed, a stray copy of a local message, or a message no local hub sent."""


class Listener(Protocol):
    """A hub as the tracker sees it."""

    name: str

    def listens(self, topic: str) -> bool:
        """A subscription in effect (asked in an earlier step, confirmed) matches ``topic``."""
        ...

    def awaits(self, topic: str) -> bool:
        """A subscription asked in this step matches ``topic``."""
        ...

    def asks(self, topic: str) -> bool:
        """Any subscription it holds, in effect or not yet, matches ``topic``."""
        ...


def digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=12).digest()


@dataclass
class _Due:
    """The retained message a new subscription is owed on one topic."""

    key: bytes
    step: int
    hold: Hold | None
    arrived: bool = False


class Flights:
    """The local hubs of one virtual clock and the deliveries each one is still owed."""

    def __init__(self, clock: Timeline) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._hubs: list[Listener] = []
        self._owed: dict[tuple[int, bytes], list[tuple[str, Hold]]] = defaultdict(list)
        self._due: dict[tuple[int, str], _Due] = {}
        self._retained: dict[str, bytes] = {}
        """The newest retained payload published on each topic by a local hub."""
        self._sent: dict[bytes, None] = {}
        """Digests of the messages sent lately, oldest first."""

    def join(self, hub: Listener) -> None:
        with self._lock:
            self._hubs.append(hub)

    def leave(self, hub: Listener) -> None:
        with self._lock:
            self._hubs = [h for h in self._hubs if h is not hub]
            holds = [h for k in [k for k in self._owed if k[0] == id(hub)] for _, h in self._owed.pop(k)]
            holds += [d.hold for k in [k for k in self._due if k[0] == id(hub)] if (d := self._due.pop(k)).hold]
        for hold in holds:
            hold.release()

    def sent(self, topic: str, payload: bytes, what: str, *, retain: bool = False) -> None:
        """``payload`` goes out on ``topic``: hold the clock for each local hub it must reach. A
        retained one is kept, and replaces what a subscription of this step is owed on the topic."""
        key = digest(payload)
        released: list[Hold] = []
        with self._lock:
            self._sent[key] = None
            if len(self._sent) > REMEMBERED:
                del self._sent[next(iter(self._sent))]
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            step = self.clock.step
            for hub in self._hubs:
                if hub.listens(topic):
                    self._owed[(id(hub), key)].append((topic, self.clock.hold(f"message {what} on {topic} to {hub.name}")))
                elif retain and hub.awaits(topic):
                    released += self._redue(hub, topic, key if payload else None, step)
        for hold in released:
            hold.release()

    def _redue(self, hub: Listener, topic: str, key: bytes | None, step: int) -> list[Hold]:
        """What ``hub``'s subscription of this step is owed on ``topic`` is now ``key`` (None: nothing)."""
        at = (id(hub), topic)
        due = self._due.get(at)
        if due is not None and due.step == step and not due.arrived:
            if key is not None:
                due.key = key  # the same hold waits for the newer payload
                return []
            del self._due[at]
            return [due.hold] if due.hold else []
        if key is None:
            self._due.pop(at, None)
        else:
            self._due[at] = _Due(key, step, self.clock.hold(f"retained message on {topic} to {hub.name}"))
        return []

    def refused(self, topic: str, payload: bytes) -> None:
        """The broker refused ``payload`` (its sender may not publish on ``topic``): nobody is owed it."""
        key = digest(payload)
        with self._lock:
            holds = [hold for k in [k for k in self._owed if k[1] == key] for _, hold in self._owed.pop(k)]
            holds += [d.hold for at in [at for at, d in self._due.items() if d.key == key and not d.arrived]
                      if (d := self._due.pop(at)).hold is not None]
            if self._retained.get(topic) == payload:
                del self._retained[topic]
        for hold in holds:
            hold.release()

    def subscribing(self, hub: Listener, pattern: str) -> None:
        """``hub`` asks for ``pattern``: it is owed the retained messages that match on topics it
        does not hear yet (the broker sends them after its SUBACK): hold the clock for each."""
        with self._lock:
            step = self.clock.step
            for topic, payload in self._retained.items():
                if topics_match(pattern, topic) and not hub.listens(topic):  # it has that topic's news already
                    due = self._due.get((id(hub), topic))
                    if due is None or due.step != step:  # a second pattern of this step on the topic is owed it once
                        self._due[(id(hub), topic)] = _Due(digest(payload), step,
                                                           self.clock.hold(f"retained message on {topic} to {hub.name}"))

    def arrived(self, hub: Listener, topic: str, payload: bytes) -> tuple[Arrival, Hold | None]:
        """What the copy that reached ``hub`` is, and the hold it releases (the caller releases it
        once the copy is queued for its round)."""
        key = digest(payload)
        with self._lock:
            owed = self._owed.get((id(hub), key))
            if owed:
                _, owed_hold = owed.pop(0)
                if not owed:
                    del self._owed[(id(hub), key)]
                return "owed", owed_hold
            due = self._due.get((id(hub), topic))
            if due is not None and not due.arrived and due.key == key:
                due.arrived, due_hold, due.hold = True, due.hold, None
                return "retained", due_hold
            return ("stray" if key in self._sent else "foreign"), None

    def handing(self, hub: Listener, topic: str, payload: bytes) -> bool:
        """Whether a retained copy that arrived for ``hub`` is still what its subscription is owed,
        now that the step is over (once: the answer is used up). Runs on the clock's thread while
        nothing else runs, so it takes no lock (the clock's lock is held, and ``sent`` takes this
        tracker's lock before the clock's)."""
        at = (id(hub), topic)
        due = self._due.get(at)
        if due is None or not due.arrived or due.key != digest(payload):
            return False
        self._due.pop(at, None)
        return True

    def unheard(self, hub: Listener) -> None:
        """``hub`` stopped listening to some topics: what it is owed there may never come."""
        with self._lock:
            dropped: list[Hold] = []
            for key in [k for k in self._owed if k[0] == id(hub)]:
                keep: list[tuple[str, Hold]] = []
                for topic, hold in self._owed[key]:
                    if hub.listens(topic):
                        keep.append((topic, hold))
                    else:
                        dropped.append(hold)
                if keep:
                    self._owed[key] = keep
                else:
                    del self._owed[key]
            for at in [k for k, d in self._due.items() if k[0] == id(hub) and not d.arrived and not hub.asks(k[1])]:
                if (due_hold := self._due.pop(at).hold) is not None:
                    dropped.append(due_hold)
        for hold in dropped:
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

    def refused(self, topic: str, payload: bytes) -> None:
        return None

    def arrived(self, hub: Listener, topic: str, payload: bytes) -> tuple[Arrival, Hold | None]:
        return "foreign", None

    def handing(self, hub: Listener, topic: str, payload: bytes) -> bool:
        return True

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
