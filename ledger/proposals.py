"""What holders decide and how they say it: proposal kinds with their payloads, signed ballots,
tallies, a machine's standing (what passed proposals changed) and the audit trail.

Payloads carry every number the holders vote on (a budget, a salvage value, a child's funding),
computed by whoever proposes, so executing a passed proposal needs nothing that was not voted on.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import InvalidProposal
from core.money import Micros
from ledger.identity import Identity, sign_document

__all__ = [
    "PAYLOADS",
    "AuditRecord",
    "Choice",
    "Execution",
    "Proposal",
    "ProposalKind",
    "ProposalState",
    "Standing",
    "Tally",
    "check_payload",
    "sign_ballot",
]

Choice = Literal["yes", "no", "abstain"]
ProposalState = Literal["open", "passed", "rejected", "executed", "failed"]
Status = Literal["active", "parked", "retired"]


class ProposalKind(StrEnum):
    MAINTENANCE = "maintenance"
    """A budget for maintenance, paid from the wear reserve first; the machine hires the work out."""
    PRICING = "pricing"
    """A new margin or price floor: the next bid uses it."""
    TERRITORY = "territory"
    PAYOUT = "payout"
    """How much of each job's profit the machine keeps; the rest goes to its holders at once."""
    SPAWN = "spawn"
    RELOCATE = "relocate"
    PARK = "park"
    RESUME = "resume"
    RETIRE = "retire"
    EXPENSE = "expense"
    """A payment above the agent's own limits."""
    DELEGATE = "delegate"
    """A collective's members deciding how it votes on another proposal."""


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rationale: str = Field(default="", max_length=600)
    observations: list[str] = Field(default_factory=list, max_length=50)
    """Memory refs of the observations the proposal rests on."""


class Maintenance(_Payload):
    budget: Micros = Field(gt=0)
    wear_pct: float | None = None


class Pricing(_Payload):
    margin_bps: int | None = Field(default=None, ge=0, le=100_000)
    price_floor: Micros | None = None

    @model_validator(mode="after")
    def _something(self) -> Pricing:
        if self.margin_bps is None and self.price_floor is None:
            raise ValueError("a pricing proposal sets margin_bps, price_floor or both")
        return self


class Territory(_Payload):
    regions: list[str] = Field(min_length=1, max_length=50)


class Payout(_Payload):
    retain_bps: int = Field(ge=0, le=10_000)


class Spawn(_Payload):
    child_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    child_did: str = Field(pattern=r"^did:key:z")
    region: str = Field(min_length=1)
    purchase: Micros
    """Paid to the seller of the new machine."""
    capital: Micros
    """Working capital moved to the child's wallet."""


class Relocate(_Payload):
    region: str = Field(min_length=1)
    cost: Micros = 0
    territory: list[str] | None = None


class Park(_Payload):
    pass


class Resume(_Payload):
    pass


class Retire(_Payload):
    salvage: Micros = 0
    """What the machine sells for; it and everything in its accounts goes to its holders."""


class Expense(_Payload):
    amount: Micros = Field(gt=0)
    payee: str = Field(min_length=1)
    memo: str = ""


class Delegate(_Payload):
    proposal_id: str
    """The proposal the collective votes on with what its members decide here."""


PAYLOADS: dict[ProposalKind, type[_Payload]] = {
    ProposalKind.MAINTENANCE: Maintenance, ProposalKind.PRICING: Pricing, ProposalKind.TERRITORY: Territory,
    ProposalKind.PAYOUT: Payout, ProposalKind.SPAWN: Spawn, ProposalKind.RELOCATE: Relocate, ProposalKind.PARK: Park,
    ProposalKind.RESUME: Resume, ProposalKind.RETIRE: Retire, ProposalKind.EXPENSE: Expense, ProposalKind.DELEGATE: Delegate,
}


def check_payload(kind: ProposalKind, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload validated for ``kind``, as stored; a ``GovernanceError`` names what to fix."""
    try:
        model = PAYLOADS[kind].model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors(include_url=False))
        raise InvalidProposal(f"a {kind.value} proposal's payload is invalid: {problems}") from None
    return model.model_dump(exclude_defaults=True)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Proposal(_Record):
    id: str
    machine_id: str
    """The entity it governs: a machine, or a collective (``dao:…``) for a delegate proposal."""
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
    state: ProposalState = "open"


class Tally(_Record):
    proposal_id: str
    yes: int = 0
    no: int = 0
    abstain: int = 0
    total: int = Field(description="Share units that may vote")
    voters: dict[str, Choice] = Field(default_factory=dict)

    @property
    def cast(self) -> int:
        return self.yes + self.no + self.abstain

    @property
    def turnout_bps(self) -> int:
        return self.cast * 10_000 // self.total if self.total else 0


class Standing(_Record):
    """What passed proposals made of a machine: whether it works, where, and the policy it bids by."""

    machine_id: str
    status: Status = "active"
    region: str | None = None
    """None: the region of its profile."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """Changes to its profile's policy (margin, floor, territory), applied in the order voted."""
    retain_bps: int | None = None
    """Payout policy; None: the charter's."""
    parent: str | None = None
    missed_h: float = 0.0
    """Hours in a row it could not pay its fixed costs."""
    changed_at: datetime | None = None
    version: int = 0


class Execution(_Record):
    proposal_id: str
    state: Literal["running", "done", "failed"]
    steps: tuple[dict[str, Any], ...]
    detail: str = ""
    replayed: bool = False
    """True when the proposal had been executed before and nothing was done this time."""


class AuditRecord(_Record):
    at: datetime
    entity: str
    proposal_id: str | None
    action: str
    """opened, vote, passed, rejected, executing, executed, failed, registered, died, charged…"""
    actor: str
    detail: dict[str, Any]


def sign_ballot(identity: Identity, proposal_id: str, holder: str, choice: Choice) -> dict[str, Any]:
    """A ballot ``identity`` signs for ``holder``'s shares: what ``Governance.vote`` takes."""
    return sign_document({"proposal_id": proposal_id, "holder": holder, "choice": choice}, identity, signer_field="voter")
