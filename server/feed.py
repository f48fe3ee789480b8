"""The hub as the server sees it: the latest telemetry and presence of every machine and the recent
events of every job, fanned out to the browsers and API clients that stream them.

One hub connection, subscribed to what a cockpit shows. The hub checks every envelope's signature
before a handler sees it, so what reaches a browser was signed by the machine it names. Handlers run
on the hub's thread and hand each event to the server's event loop; a stream client that falls
behind loses its oldest events, never blocks the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from core.clock import Timeline
from hub import topics
from hub.dispatch import Dispatch
from hub.envelope import Envelope
from hub.messages import ControlResult, GovernanceNotice, Handoff, JobEvent, Presence, TelemetryReport
from hub.transport import Hub
from machines.driver import Telemetry

__all__ = ["Feed", "Heard", "LiveEvent", "Subscription"]

log = logging.getLogger("tamc.server.feed")

EventType = Literal["telemetry", "presence", "job", "proposal", "governance", "handoff", "control"]
QUEUE_SIZE = 500
JOB_EVENTS_KEPT = 50


class Heard(NamedTuple):
    """A job's event and the did that signed it (the hub checked the signature; who may say what is
    the reader's to judge: a machine's steps count only from the did it registered)."""

    sender: str
    event: JobEvent


class LiveEvent(BaseModel):
    """One thing that happened, as a stream client receives it."""

    type: EventType
    machine_id: str | None = None
    job_id: str | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict[str, Any] = Field(default_factory=dict)


class Subscription:
    """A stream client's queue of events, filtered to what it may see."""

    def __init__(self, feed: Feed, accept: Callable[[LiveEvent], bool]) -> None:
        self.feed = feed
        self.accept = accept
        self.queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.dropped = 0

    def offer(self, event: LiveEvent) -> None:
        if not self.accept(event):
            return
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def close(self) -> None:
        self.feed.unsubscribe(self)


class Feed:
    def __init__(self, broker_url: str, *, name: str = "server", clock: Timeline | None = None) -> None:
        self.hub = Hub(broker_url, name=name, clock=clock)  # the market's clock: what it sends is dated, and aged, on it
        self.telemetry: dict[str, Telemetry] = {}
        self.presence: dict[str, Presence] = {}
        self.job_events: dict[str, deque[Heard]] = defaultdict(lambda: deque(maxlen=JOB_EVENTS_KEPT))
        self.handoffs: dict[str, Handoff] = {}
        """Each machine's latest handoff notice (retained on the hub): the gauge's count; the console reads the ledger."""
        self.received = 0
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[str, ControlResult]] = {}
        """Answers to commands this server sent, by command id, with who signed them."""
        self._answered = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatch = (Dispatch().on(TelemetryReport, self._on_telemetry).on(Presence, self._on_presence)
                          .on(JobEvent, self._on_job).on(Handoff, self._on_handoff).on(ControlResult, self._on_control)
                          .on(GovernanceNotice, self._on_governance))

    def start(self, loop: asyncio.AbstractEventLoop) -> Feed:
        self._loop = loop
        self.hub.connect()
        self.hub.subscribe(f"{topics.PREFIX}/machines/+/telemetry", self._on_message)
        self.hub.subscribe(topics.ALL_PRESENCE, self._on_message)
        self.hub.subscribe(f"{topics.PREFIX}/machines/+/governance", self._on_message)
        self.hub.subscribe(f"{topics.PREFIX}/jobs/+/events", self._on_message)
        self.hub.subscribe(topics.ALL_HANDOFFS, self._on_message)
        self.hub.subscribe(f"{topics.PREFIX}/machines/+/control/result", self._on_message)
        return self

    def close(self) -> None:
        self.hub.close()

    # -- clients ---------------------------------------------------------------------------------

    def subscribe(self, accept: Callable[[LiveEvent], bool]) -> Subscription:
        """Must be called on the server's event loop."""
        sub = Subscription(self, accept)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def expect(self, command_id: str) -> None:
        """Watch for the answer to a command about to be sent."""
        with self._lock:
            self._answers.pop(command_id, None)

    def answer(self, command_id: str, timeout: float) -> tuple[str, ControlResult] | None:
        """The machine's answer to a command, and who signed it; None if none came in ``timeout`` s."""
        with self._answered:
            self._answered.wait_for(lambda: command_id in self._answers, timeout=timeout)
            return self._answers.pop(command_id, None)

    def open_handoffs(self) -> list[Handoff]:
        return [h for h in list(self.handoffs.values()) if h.state != "closed"]

    @property
    def clients(self) -> int:
        return len(self._subs)

    def emit(self, event: LiveEvent) -> None:
        """Send an event to the stream clients (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while the server stops
            loop.call_soon_threadsafe(self._fan_out, event)

    def _fan_out(self, event: LiveEvent) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.offer(event)

    # -- the hub ---------------------------------------------------------------------------------

    def _on_message(self, topic: str, env: Envelope) -> None:
        self.received += 1
        self._dispatch(env)

    def _on_telemetry(self, env: Envelope, body: TelemetryReport) -> None:
        t = body.telemetry
        self.telemetry[t.machine_id] = t
        self.emit(LiveEvent(type="telemetry", machine_id=t.machine_id, data=t.model_dump(mode="json")))

    def _on_presence(self, env: Envelope, body: Presence) -> None:
        self.presence[body.machine_id] = body
        self.emit(LiveEvent(type="presence", machine_id=body.machine_id,
                            data=body.model_dump(mode="json", include={"state", "kind", "region", "territory"})))

    def _on_job(self, env: Envelope, body: JobEvent) -> None:
        self.job_events[body.job_id].append(Heard(env.sender, body))
        self.emit(LiveEvent(type="job", machine_id=body.machine_id, job_id=body.job_id,
                            data=body.model_dump(mode="json", exclude={"job_id", "machine_id"})))

    def _on_handoff(self, env: Envelope, body: Handoff) -> None:  # a prompt to look: the console reads the ledger
        self.handoffs[body.machine_id] = body
        self.emit(LiveEvent(type="handoff", machine_id=body.machine_id, job_id=body.job_id,
                            data=body.model_dump(mode="json", include={"handoff_id", "state", "reason", "detail", "operator"})))

    def _on_control(self, env: Envelope, body: ControlResult) -> None:
        with self._answered:
            self._answers[body.command_id] = (env.sender, body)
            if len(self._answers) > 1000:  # answers nobody waited for (sent by other consoles)
                self._answers.pop(next(iter(self._answers)))
            self._answered.notify_all()
        self.emit(LiveEvent(type="control", machine_id=body.machine_id, data=body.model_dump(mode="json", exclude={"machine_id"})))

    def _on_governance(self, env: Envelope, body: GovernanceNotice) -> None:
        self.emit(LiveEvent(type="governance", machine_id=body.machine_id, data=body.model_dump(mode="json", exclude={"machine_id"})))
