"""A requester's open jobs, kept on disk so that a requester killed at any point resumes each of
them to one of its three ends (paid, refunded, expired).

One row per job, in a table beside the ledger's (the same database: SQLite, or PostgreSQL on the
scale path): written before its call goes out and after every step that changed it, and when it
closes, replaced by its outcome, so a restarted requester neither loses a job nor posts one twice. What a
step sent before its row was written is sent again on resume: the protocol's receivers and the
ledger's idempotency keys absorb the repeats (an award repeated gets ``accepted`` again, an escrow
opened again is the same escrow), so the journal never needs to be ahead of the wire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Engine,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from agents.negotiation import Negotiation
from hub.messages import Bid, CallForProposals, Offer
from ledger import create_tables, transaction
from machines.job import JobSpec
from pricing.haggle import RequesterStrategy

__all__ = ["Journal", "RunRecord"]

_meta = MetaData()
_jobs = Table(
    "requester_jobs", _meta,
    Column("owner", String(200), primary_key=True),
    Column("job_id", String(200), primary_key=True),
    Column("open", Boolean, nullable=False),
    Column("body", Text, nullable=False),
    # an open job's RunRecord; a closed one's outcome (the requester's JobOutcome)
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class RunRecord(BaseModel):
    """What a requester knows of one open job: enough to carry it on after a restart."""

    job: JobSpec
    reserve: int
    value: int
    cfp: CallForProposals
    posted: int
    bids: list[Bid] = []
    ranked: list[Bid] = []
    excluded: list[str] = []
    state: Literal["bidding", "haggling", "awarding", "contracted", "closed"] = "bidding"
    attempt: int = 0
    machine: str | None = None
    machine_did: str | None = None
    price: int | None = None
    funded: bool = False
    escrow_posting: str | None = None
    started: bool = False
    held: bool = False
    takeovers: int = 0
    finish_at: int | None = None
    moving: Offer | None = None
    moves: int = 0
    moved: int = 0
    accept_latency_ms: float | None = None
    awards_sent: list[str] = []
    strategy: RequesterStrategy | None = None
    negotiation: Negotiation | None = None
    deadline_at: int | None = None


class Journal:
    """The open jobs of the requester whose job ids are in ``owner``'s namespace."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self.engine = engine
        self.owner = owner
        create_tables(engine, _meta)
        self._saved: dict[str, str] = {}
        """What each job's row holds now: a step that changed nothing writes nothing."""

    def save(self, record: RunRecord) -> None:
        body = record.model_dump_json()
        job_id = record.job.id
        if self._saved.get(job_id) == body:
            return
        now = datetime.now(UTC)
        transaction(self.engine, lambda conn: self._write(conn, job_id, True, body, now))
        self._saved[job_id] = body

    def close(self, job_id: str, outcome: str) -> None:
        """The job ended: its row keeps the outcome (JSON) instead of its state."""
        now = datetime.now(UTC)
        transaction(self.engine, lambda conn: self._write(conn, job_id, False, outcome, now))
        self._saved.pop(job_id, None)

    def knows(self, job_id: str) -> bool:
        """Posted before (open or ended): a restarted requester does not post it again."""
        if job_id in self._saved:
            return True
        return transaction(self.engine, lambda c: c.execute(select(_jobs.c.job_id).where(self._row(job_id))).first() is not None,
                           write=False)

    def ended(self) -> list[str]:
        """The outcomes (JSON) of the jobs that ended."""
        query = select(_jobs.c.body).where((_jobs.c.owner == self.owner) & ~_jobs.c.open)
        return transaction(self.engine, lambda c: [r.body for r in c.execute(query)], write=False)

    def _row(self, job_id: str) -> ColumnElement[bool]:
        return (_jobs.c.owner == self.owner) & (_jobs.c.job_id == job_id)

    def _write(self, conn: Connection, job_id: str, is_open: bool, body: str, now: datetime) -> None:
        where = self._row(job_id)
        if job_id in self._saved or conn.execute(select(_jobs.c.job_id).where(where)).first() is not None:
            conn.execute(update(_jobs).where(where).values(open=is_open, body=body, updated_at=now))
        else:
            conn.execute(insert(_jobs).values(owner=self.owner, job_id=job_id, open=is_open, body=body, updated_at=now))

    def load(self) -> list[RunRecord]:
        """The open jobs, oldest call first."""
        query = select(_jobs.c.body).where((_jobs.c.owner == self.owner) & _jobs.c.open)
        rows = transaction(self.engine, lambda c: c.execute(query).all(), write=False)
        records = [RunRecord.model_validate_json(r.body) for r in rows]
        for r in records:
            self._saved[r.job.id] = r.model_dump_json()
        return sorted(records, key=lambda r: (r.posted, r.job.id))
