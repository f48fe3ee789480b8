"""Who holds the machine — an operator, or nobody (its agent runs it) — and the handoffs shown to them.

The job runner raises and closes handoffs as a job's workflow moves; the control desk takes and
hands back the machine. Both record it here, and each handoff's newest state is published retained
on the machine's handoff topic for the console.
"""

from __future__ import annotations

from datetime import datetime

from agents.node.outbox import Outbox
from core.clock import Timeline
from hub import topics
from hub.messages import Handoff
from ledger.operations import HandoffRecord, Operations

__all__ = ["Holding"]


class Holding:
    def __init__(self, machine_id: str, ops: Operations | None, outbox: Outbox, clock: Timeline) -> None:
        self.machine_id = machine_id
        self.ops = ops
        self.outbox = outbox
        self.clock = clock
        self.held_by: str | None = None
        """The operator in control of the machine now, or None (the agent runs it)."""
        self.held_since: datetime | None = None

    def take(self, operator: str, since: datetime | None) -> None:
        self.held_by, self.held_since = operator, since

    def free(self) -> None:
        self.held_by = self.held_since = None

    def close(self, handoff_id: str, decision: str, *, free: bool) -> None:
        """Close a handoff: the workflow moved on from it (handed back, escalated, or the job closed).
        ``free``: the machine is no longer held once it is (the handoff was the running job's)."""
        if self.ops is not None:
            before = self.ops.handoff(handoff_id)
            if before.state == "closed":
                return
            record = self.ops.close(handoff_id, decision[:20], self.clock.now())
            self.publish(record)
        if free:
            self.free()

    def attach(self, record: HandoffRecord) -> None:
        """Give the operator holding the machine the handoff its workflow just raised for them."""
        if self.ops is None or self.held_by is None:
            return
        taken = self.ops.take(record.id, self.held_by, self.clock.now())
        self.publish(taken)

    def publish(self, record: HandoffRecord) -> None:
        body = Handoff(handoff_id=record.id, machine_id=record.machine_id, job_id=record.job_id, state=record.state,
                       reason=record.reason, detail=record.detail, proposal=record.proposal, context=record.context,
                       raised_at=int(record.raised_at.timestamp() * 1000), wait_until=int(record.wait_until.timestamp() * 1000),
                       operator=record.operator, decision=record.decision)
        self.outbox.publish(topics.handoff(self.machine_id), body, retain=True)
