"""Proposals and votes of a machine's holders: what the machine asks its owners, and their answer.

A proposal freezes the cap table when it opens, so shares bought later do not vote on it; each
holder has one vote, and a recast replaces the earlier one. Opening is idempotent by key, so a
machine that asks twice for the same thing (a retried tool call, a restart) opens one proposal.
This is the store; charters (quorum, threshold) and execution build on it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.engine import Connection

from core.errors import GovernanceError, InputError
from ledger import _db
from ledger._db import proposals, votes
from ledger.book import Ledger, _aware

__all__ = ["Choice", "Governance", "Proposal", "ProposalKind", "Tally"]

Choice = Literal["yes", "no", "abstain"]


class ProposalKind(StrEnum):
    MAINTENANCE = "maintenance"
    PRICING = "pricing"
    TERRITORY = "territory"
    EXPENSE = "expense"


class Proposal(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    machine_id: str
    kind: ProposalKind
    title: str
    payload: dict[str, Any]
    evidence: tuple[str, ...]
    """The observations behind it, in words a holder can check."""
    opened_by: str
    opened_at: datetime
    closes_at: datetime
    weights: dict[str, int]
    """Holder account -> share units when the proposal opened: the votes that count."""
    state: str = "open"


class Tally(BaseModel):
    model_config = ConfigDict(frozen=True)

    proposal_id: str
    yes: int = 0
    no: int = 0
    abstain: int = 0
    total: int = Field(description="Share units that may vote")
    voters: dict[str, Choice] = Field(default_factory=dict)

    @property
    def turnout_bps(self) -> int:
        return (self.yes + self.no + self.abstain) * 10_000 // self.total if self.total else 0


class Governance:
    """Proposals and votes, in the ledger's database."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._engine = ledger.engine

    def open(
        self,
        machine_id: str,
        kind: ProposalKind | str,
        title: str,
        *,
        key: str,
        opened_by: str,
        payload: dict[str, Any] | None = None,
        evidence: list[str] | tuple[str, ...] = (),
        window_h: float = 72.0,
    ) -> Proposal:
        """Open a proposal to the holders of ``machine_id``, or return the one opened under ``key``."""
        kind = ProposalKind(kind)
        if not title.strip() or len(title) > 500:
            raise InputError("a proposal needs a title of 1 to 500 characters")
        if window_h <= 0:
            raise InputError(f"voting window must be positive, got {window_h} h")
        weights = self.ledger.cap_table(machine_id)
        if not weights:
            raise GovernanceError(f"machine {machine_id!r} has no shareholders to ask")
        now = datetime.now(UTC)

        def run(conn: Connection) -> Proposal:
            row = conn.execute(select(proposals).where(proposals.c.key == key)).first()
            if row is None:
                conn.execute(proposals.insert().values(
                    id=str(uuid.uuid4()), key=key, machine_id=machine_id, kind=kind.value, title=title,
                    payload=json.dumps(payload or {}, sort_keys=True), evidence=json.dumps(list(evidence)),
                    opened_by=opened_by, opened_at=now, closes_at=now + timedelta(hours=window_h),
                    weights=json.dumps(weights, sort_keys=True), state="open",
                ))
                row = conn.execute(select(proposals).where(proposals.c.key == key)).one()
            return _proposal(row)

        return _db.transaction(self._engine, run)

    def get(self, proposal_id: str) -> Proposal:
        row = _db.transaction(self._engine, lambda c: c.execute(select(proposals).where(proposals.c.id == proposal_id)).first(), write=False)
        if row is None:
            raise GovernanceError(f"no proposal {proposal_id!r}")
        return _proposal(row)

    def proposals(self, machine_id: str | None = None, *, state: str | None = None) -> list[Proposal]:
        """Proposals, newest first, of one machine or all."""
        query = select(proposals).order_by(proposals.c.opened_at.desc())
        if machine_id is not None:
            query = query.where(proposals.c.machine_id == machine_id)
        if state is not None:
            query = query.where(proposals.c.state == state)
        rows = _db.transaction(self._engine, lambda c: c.execute(query).all(), write=False)
        return [_proposal(r) for r in rows]

    def vote(self, proposal_id: str, holder: str, choice: Choice) -> Tally:
        """Cast (or recast) ``holder``'s vote with the shares it held when the proposal opened."""
        if choice not in ("yes", "no", "abstain"):
            raise InputError(f"a vote is yes, no or abstain, not {choice!r}")
        proposal = self.get(proposal_id)
        if proposal.state != "open" or datetime.now(UTC) >= proposal.closes_at:
            raise GovernanceError(f"proposal {proposal_id} is closed for voting")
        weight = proposal.weights.get(holder)
        if not weight:
            raise GovernanceError(f"{holder!r} held no shares of {proposal.machine_id} when proposal {proposal_id} opened")

        def run(conn: Connection) -> None:
            conn.execute(votes.delete().where(votes.c.proposal_id == proposal_id, votes.c.holder == holder))
            conn.execute(votes.insert().values(proposal_id=proposal_id, holder=holder, choice=choice, weight=weight,
                                               cast_at=datetime.now(UTC)))

        _db.transaction(self._engine, run)
        return self.tally(proposal_id)

    def tally(self, proposal_id: str) -> Tally:
        proposal = self.get(proposal_id)
        rows = _db.transaction(self._engine, lambda c: c.execute(select(votes).where(votes.c.proposal_id == proposal_id)).all(), write=False)
        sums = {"yes": 0, "no": 0, "abstain": 0}
        for r in rows:
            sums[r.choice] += r.weight
        return Tally(proposal_id=proposal_id, total=sum(proposal.weights.values()), voters={r.holder: r.choice for r in rows}, **sums)


def _proposal(row: Any) -> Proposal:
    return Proposal(
        id=row.id, machine_id=row.machine_id, kind=ProposalKind(row.kind), title=row.title, payload=json.loads(row.payload),
        evidence=tuple(json.loads(row.evidence)), opened_by=row.opened_by, opened_at=_aware(row.opened_at),
        closes_at=_aware(row.closes_at), weights=json.loads(row.weights), state=row.state,
    )
