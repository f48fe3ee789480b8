"""The node's one way out, and its way in.

``Outbox`` signs and publishes everything the machine says — job events, telemetry, presence, bids,
handoffs, control results — and keeps the action log: who acted on the machine (its agent, or the
operator whose command it is carrying out) and when. ``Inbox`` subscribes the node to topics; every
envelope it hears goes to the node's mailbox and from there to its dispatch table.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator

from core.clock import Timeline
from core.mailbox import Mailbox
from hub import topics
from hub.dispatch import Dispatch
from hub.envelope import Envelope
from hub.messages import Body, EventKind, Haggle, JobEvent, Presence, SealedBid, TelemetryReport
from hub.transport import Hub
from ledger import Identity
from machines.driver import Telemetry

__all__ = ["HISTORY", "Inbox", "Outbox"]

HISTORY = 200
"""Telemetry readings (and bid records) a node keeps for its tools and its saved state."""


class Outbox:
    def __init__(self, machine_id: str, identity: Identity, hub: Hub, clock: Timeline, *,
                 on_event: Callable[[str, JobEvent], None] | None = None) -> None:
        self.machine_id = machine_id
        self.identity = identity
        self.hub = hub
        self.clock = clock
        self.on_event = on_event
        self.acting_for: str | None = None
        """The operator whose command the node is carrying out now (None: the agent acts)."""
        self.actions: deque[tuple[float, str, str]] = deque(maxlen=1000)
        """(market time, actor, what) of everything the node sent on the hub but telemetry, presence and
        bids: who acted on the machine, and when (the agent, or an operator's did)."""
        self.readings: deque[Telemetry] = deque(maxlen=HISTORY)
        """Telemetry published at each change (the periodic readings are not kept)."""

    @contextlib.contextmanager
    def acting(self, operator: str) -> Iterator[None]:
        """What is sent inside is the operator's doing, not the agent's."""
        self.acting_for = operator
        try:
            yield
        finally:
            self.acting_for = None

    def publish(self, topic: str, body: Body, *, retain: bool = False) -> None:
        if not isinstance(body, TelemetryReport | Presence):
            self.actions.append((self.clock.time(), self.acting_for or "agent", f"{body.TYPE} {getattr(body, 'kind', '')}".strip()))
        self.hub.send(topic, body, self.identity, retain=retain)

    def bid(self, topic: str, body: SealedBid | Haggle) -> None:
        """A bid (or a negotiation's answer) sealed to the requester: not for the action log (a decision
        record, or the negotiation's steps, keep it)."""
        self.hub.send(topic, body, self.identity)

    def event(self, job_id: str, kind: EventKind, *, progress: float = 0.0, detail: str = "", move: int | None = None) -> None:
        event = JobEvent(job_id=job_id, machine_id=self.machine_id, kind=kind, progress=progress, detail=detail, move=move)
        self.publish(topics.events(job_id), event)
        if self.on_event:
            self.on_event(self.machine_id, event)

    def telemetry(self, reading: Telemetry, *, keep: bool = True) -> None:
        """Publish a reading; ``keep`` also puts it in the history."""
        if keep:
            self.readings.append(reading)
        self.publish(topics.telemetry(self.machine_id), TelemetryReport(telemetry=reading), retain=True)

    def presence(self, sealed: bytes) -> None:
        """The machine's signed presence notice, retained (the broker's last will repeats the offline one)."""
        self.hub.publish(topics.presence(self.machine_id), sealed, retain=True)


class Inbox:
    """The topics the node listens on; each envelope heard runs ``dispatch`` on the node's mailbox."""

    def __init__(self, hub: Hub, mailbox: Mailbox, dispatch: Dispatch) -> None:
        self.hub = hub
        self.mailbox = mailbox
        self.dispatch = dispatch
        self.calls: list[str] = []
        """The call-for-proposals topics listened on (the territory's, while the machine works)."""

    def tune(self, wanted: list[str], *, live: bool) -> None:
        """Listen for calls on ``wanted`` from now on (``live``: the node has joined; else just noted)."""
        if live:
            for topic in set(self.calls) - set(wanted):
                self.leave(topic)
            for topic in set(wanted) - set(self.calls):
                self.listen(topic)
        self.calls = wanted

    def listen(self, topic: str) -> None:
        self.hub.subscribe(topic, self._deliver)

    def leave(self, topic: str) -> None:
        self.hub.unsubscribe(topic, self._deliver)

    def _deliver(self, topic: str, env: Envelope) -> None:
        self.mailbox.post(self.dispatch, env)
