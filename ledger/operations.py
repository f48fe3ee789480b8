"""Who operates machines, the handoffs machines raised to them, and every command they sent.

The system of record for operator control, next to money and governance in the ledger's database
(SQLite or PostgreSQL), so every node, the server and an auditor read the same facts:

- **grants**: roles given to a ``did`` on one machine or on every machine (``*``): ``operator``
  (takes control of the machine), ``admin`` (everything), ``console`` (a server trusted to relay
  the commands of operators it authenticated);
- **handoffs**: a machine asked a person for help with a job: pending → taken (by an operator) →
  closed (with the operator's decision, or ``escalate`` when nobody came in time);
- **control audit**: each command once, by its id: who, when, what, and what came of it. A command
  seen again (a redelivery, a restarted node) finds its record and is not carried out twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import JSON, Boolean, Column, DateTime, Index, MetaData, String, Table, insert, select, update
from sqlalchemy.engine import Connection, Engine

from core.errors import InputError, UnknownHandoff
from ledger._db import create_tables, transaction

T = TypeVar("T")

__all__ = ["ALL_MACHINES", "CommandRecord", "HandoffRecord", "HandoffState", "Operations", "Role"]

ALL_MACHINES = "*"

HandoffState = Literal["pending", "taken", "closed"]


class Role(StrEnum):
    STAKEHOLDER = "stakeholder"
    OPERATOR = "operator"
    REQUESTER = "requester"
    ADMIN = "admin"
    CONSOLE = "console"
    """A server that relays operators' commands after authenticating them (granted for ``*``)."""


class HandoffRecord(BaseModel):
    id: str
    machine_id: str
    job_id: str | None
    reason: str
    """A stable code: ``anomaly.temperature``, ``anomaly.wear``, ``anomaly.battery``, ``anomaly.incident``,
    ``envelope``, ``low-confidence``, ``charter``, ``operator`` (a person took over unasked)."""
    detail: str
    proposal: str
    """What the agent proposes the operator do."""
    context: dict[str, Any]
    """What the agent saw: telemetry, the job, the numbers that tripped the check."""
    state: HandoffState
    raised_at: datetime
    wait_until: datetime
    """Past this, with nobody in control, the machine escalates (the runner-up takes the job)."""
    operator: str | None = None
    taken_at: datetime | None = None
    decision: str | None = None
    closed_at: datetime | None = None


class CommandRecord(BaseModel):
    command_id: str
    machine_id: str
    operator: str
    at: datetime
    command: str
    args: dict[str, Any]
    ok: bool
    result: str
    error: str | None = None
    """The refusal's error type (NotInControl, CommandRejected, …) when not ok."""


_meta = MetaData()
_grants = Table(
    "api_grants", _meta,
    Column("did", String(200), primary_key=True),
    Column("machine_id", String(200), primary_key=True),
    Column("role", String(20), primary_key=True),
)
_handoffs = Table(
    "handoffs", _meta,
    Column("id", String(64), primary_key=True),
    Column("machine_id", String(200), nullable=False),
    Column("job_id", String(200)),
    Column("reason", String(40), nullable=False),
    Column("detail", String(2000), nullable=False),
    Column("proposal", String(2000), nullable=False),
    Column("context", JSON, nullable=False),
    Column("state", String(10), nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False),
    Column("wait_until", DateTime(timezone=True), nullable=False),
    Column("operator", String(200)),
    Column("taken_at", DateTime(timezone=True)),
    Column("decision", String(20)),
    Column("closed_at", DateTime(timezone=True)),
    Index("ix_handoffs_machine_state", "machine_id", "state"),
)
_flows = Table(
    "job_flows", _meta,
    Column("thread_id", String(420), primary_key=True),
    Column("machine_id", String(200), nullable=False),
    Column("job_id", String(200), nullable=False),
    Column("open", Boolean, nullable=False),
    Index("ix_job_flows_machine_open", "machine_id", "open"),
)
_audit = Table(
    "control_audit", _meta,
    Column("command_id", String(64), primary_key=True),
    Column("machine_id", String(200), nullable=False),
    Column("operator", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("command", String(20), nullable=False),
    Column("args", JSON, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("result", String(2000), nullable=False),
    Column("error", String(40)),
    Index("ix_control_audit_machine", "machine_id", "at"),
)


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


class Operations:
    """Grants, handoffs and the control audit, on the ledger's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(engine, _meta)

    def _read(self, fn: Callable[[Connection], T]) -> T:
        """A read that waits out a database restart like every write does."""
        return transaction(self.engine, fn, write=False)

    # -- grants ------------------------------------------------------------------------------------

    def grant(self, did: str, role: Role, machine_id: str = ALL_MACHINES) -> None:
        if role in (Role.STAKEHOLDER, Role.REQUESTER):
            raise InputError(f"{role.value} is not granted: it follows from the ledger (shares held, a requester wallet owned)")
        if role in (Role.ADMIN, Role.CONSOLE) and machine_id != ALL_MACHINES:
            raise InputError(f"{role.value} is granted for every machine ('*') only")

        def write(conn: Connection) -> None:
            exists = conn.execute(select(_grants).where((_grants.c.did == did) & (_grants.c.machine_id == machine_id)
                                                        & (_grants.c.role == role.value))).first()
            if exists is None:
                conn.execute(insert(_grants).values(did=did, machine_id=machine_id, role=role.value))

        transaction(self.engine, write)

    def granted(self, did: str) -> list[tuple[str, Role]]:
        query = select(_grants.c.machine_id, _grants.c.role).where(_grants.c.did == did)
        rows = self._read(lambda c: c.execute(query).all())
        return [(r.machine_id, Role(r.role)) for r in rows]

    def holds(self, did: str, machine_id: str, *roles: Role) -> bool:
        """True if ``did`` was granted one of ``roles`` (or admin) on the machine or on every machine."""
        wanted = {*roles, Role.ADMIN}
        return any(m in (machine_id, ALL_MACHINES) and r in wanted for m, r in self.granted(did))

    def operators(self, machine_id: str) -> list[str]:
        """The dids that may take control of the machine (its operators and the admins)."""
        query = select(_grants.c.did).where(_grants.c.machine_id.in_((machine_id, ALL_MACHINES))
                                            & _grants.c.role.in_((Role.OPERATOR.value, Role.ADMIN.value)))
        rows = self._read(lambda c: c.execute(query).all())
        return sorted({r.did for r in rows})

    # -- handoffs ----------------------------------------------------------------------------------

    def raise_handoff(self, record: HandoffRecord) -> tuple[HandoffRecord, bool]:
        """Record a handoff, and say if it is new; raising one again under the same id returns the
        first (a workflow step re-run after a crash)."""

        def write(conn: Connection) -> tuple[HandoffRecord, bool]:
            row = conn.execute(select(_handoffs).where(_handoffs.c.id == record.id)).first()
            if row is not None:
                return _handoff(row), False
            conn.execute(insert(_handoffs).values(**record.model_dump()))
            return record, True

        return transaction(self.engine, write)

    def handoff(self, handoff_id: str) -> HandoffRecord:
        row = self._read(lambda c: c.execute(select(_handoffs).where(_handoffs.c.id == handoff_id)).first())
        if row is None:
            raise UnknownHandoff(f"no handoff {handoff_id!r}")
        return _handoff(row)

    def open_handoffs(self, machine_id: str | None = None) -> list[HandoffRecord]:
        """Handoffs not closed yet (pending or taken), oldest first."""
        query = select(_handoffs).where(_handoffs.c.state != "closed")
        if machine_id is not None:
            query = query.where(_handoffs.c.machine_id == machine_id)
        return self._read(lambda c: [_handoff(r) for r in c.execute(query.order_by(_handoffs.c.raised_at)).all()])

    def take(self, handoff_id: str, operator: str, at: datetime) -> HandoffRecord:
        """``operator`` takes control; taking it again by the same operator is a no-op."""

        def write(conn: Connection) -> HandoffRecord:
            row = conn.execute(select(_handoffs).where(_handoffs.c.id == handoff_id)).first()
            if row is None or row.state == "closed":
                raise UnknownHandoff(f"handoff {handoff_id!r} is not open: it was handed back or never raised")
            if row.state == "taken":
                if row.operator != operator:
                    raise UnknownHandoff(f"handoff {handoff_id!r} is held by {row.operator}; they hand it back first")
                return _handoff(row)
            conn.execute(update(_handoffs).where(_handoffs.c.id == handoff_id).values(state="taken", operator=operator, taken_at=at))
            return _handoff(conn.execute(select(_handoffs).where(_handoffs.c.id == handoff_id)).one())

        return transaction(self.engine, write)

    def close(self, handoff_id: str, decision: str, at: datetime) -> HandoffRecord:
        """Close a handoff with ``decision``; closing a closed one returns it unchanged."""

        def write(conn: Connection) -> HandoffRecord:
            row = conn.execute(select(_handoffs).where(_handoffs.c.id == handoff_id)).first()
            if row is None:
                raise UnknownHandoff(f"no handoff {handoff_id!r}")
            if row.state != "closed":
                conn.execute(update(_handoffs).where(_handoffs.c.id == handoff_id).values(state="closed", decision=decision,
                                                                                          closed_at=at))
            return _handoff(conn.execute(select(_handoffs).where(_handoffs.c.id == handoff_id)).one())

        return transaction(self.engine, write)

    # -- job workflows: which are open, so a restarted node finds its own ------------------------------

    def flow_opened(self, machine_id: str, job_id: str, thread_id: str) -> None:
        def write(conn: Connection) -> None:
            if conn.execute(select(_flows.c.thread_id).where(_flows.c.thread_id == thread_id)).first() is None:
                conn.execute(insert(_flows).values(thread_id=thread_id, machine_id=machine_id, job_id=job_id, open=True))

        transaction(self.engine, write)

    def flow_closed(self, thread_id: str) -> None:
        transaction(self.engine, lambda conn: conn.execute(update(_flows).where(_flows.c.thread_id == thread_id).values(open=False)))

    def open_flows(self, machine_id: str) -> list[str]:
        query = select(_flows.c.thread_id).where((_flows.c.machine_id == machine_id) & _flows.c.open)
        rows = self._read(lambda c: c.execute(query).all())
        return [r.thread_id for r in rows]

    # -- audit -------------------------------------------------------------------------------------

    def audited(self, command_id: str) -> CommandRecord | None:
        row = self._read(lambda c: c.execute(select(_audit).where(_audit.c.command_id == command_id)).first())
        return _command(row) if row else None

    def audit(self, record: CommandRecord) -> CommandRecord:
        """Write a command's record once; the first record of a command id stands."""
        def write(conn: Connection) -> CommandRecord:
            row = conn.execute(select(_audit).where(_audit.c.command_id == record.command_id)).first()
            if row is not None:
                return _command(row)
            conn.execute(insert(_audit).values(**record.model_dump()))
            return record

        return transaction(self.engine, write)

    def audit_log(self, machine_id: str, *, limit: int = 200) -> list[CommandRecord]:
        """The machine's commands, newest first."""
        query = select(_audit).where(_audit.c.machine_id == machine_id).order_by(_audit.c.at.desc()).limit(limit)
        rows = self._read(lambda c: c.execute(query).all())
        return [_command(r) for r in rows]


def _handoff(row: Any) -> HandoffRecord:
    data = dict(row._mapping)
    for key in ("raised_at", "wait_until", "taken_at", "closed_at"):
        data[key] = _utc(data[key])
    if isinstance(data["context"], str):
        data["context"] = json.loads(data["context"])
    return HandoffRecord.model_validate(data)


def _command(row: Any) -> CommandRecord:
    data = dict(row._mapping)
    data["at"] = _utc(data["at"])
    return CommandRecord.model_validate(data)
