"""What the API takes and gives. Money is integer micro-units (1 unit = 1,000,000) everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agents.node import QueuedContract
from core.ids import NAME_PATTERN
from hub.jobids import OWNED_PATTERN
from ledger.holders import ProposalRow, ShareRow
from machines.driver import Telemetry
from machines.profile import Point
from server.access import Role

__all__ = [
    "Ballot",
    "ChallengeRequest",
    "ChallengeResponse",
    "ChatLine",
    "ChatRequest",
    "EarningsPoint",
    "Health",
    "MachineDetail",
    "MachineSummary",
    "Me",
    "PrincipalCreate",
    "Problem",
    "ProposalCreate",
    "Shares",
    "Statement",
    "StatementLineOut",
    "TokenResponse",
    "VoteRequest",
    "VoteResult",
]

MachineId = str


class Problem(BaseModel):
    """Every refusal: what went wrong and what to do about it."""

    error: str
    """The error's type (``NotAuthenticated``, ``Forbidden``, ``InputError``, ``VoteRefused``…)."""
    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    hub: bool
    machines: int
    online: int
    sim_hours: float
    model: str
    """The machines' model, or ``rules`` (no model configured: the rule engine and offline chat)."""


DID_PATTERN = r"^did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{44}$"
"""An Ed25519 did:key (multicodec 0xed01, base58btc)."""


class ChallengeRequest(BaseModel):
    did: str = Field(pattern=DID_PATTERN)


class ChallengeResponse(BaseModel):
    nonce: str
    sign: dict[str, str]
    """The document to sign with the key and send to ``/v1/auth/token`` with its ``sig``."""


class TokenResponse(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    did: str
    name: str


class Me(BaseModel):
    did: str
    name: str
    admin: bool
    roles: dict[MachineId, list[Role]]
    """Roles on each machine the principal has any on."""
    requester_wallet: str | None
    balance: int | None
    """The requester wallet's balance."""


class MachineSummary(BaseModel):
    id: str
    name: str
    kind: str
    region: str
    status: str
    """active, parked or retired (by the holders' votes)."""
    online: bool
    state: str | None
    """idle, working… from the last telemetry."""
    wear_pct: float | None
    progress: float | None
    position: Point | None = None
    """Where a vehicle is (km on the city grid)."""
    roles: list[Role]
    """The caller's roles on this machine."""


class MachineDetail(MachineSummary):
    profile: dict[str, Any]
    """The profile as it bids now (what the holders voted applied)."""
    telemetry: Telemetry | None
    wallet: int
    reserve: int
    queue: list[QueuedContract]
    """The jobs in hand, the running one first."""


class Shares(BaseModel):
    machine: str
    total_units: int
    holders: list[ShareRow]
    standing: dict[str, Any]
    charter: dict[str, Any]
    yours: dict[str, int]
    """Units held by accounts the caller's key owns."""


class StatementLineOut(BaseModel):
    posting_id: str
    key: str
    kind: str
    memo: str
    created_at: datetime
    amount: int


class EarningsPoint(BaseModel):
    at: datetime
    revenue: int
    """Revenue earned up to ``at`` (cumulative)."""
    net: int
    """Cash in minus cash out of the wallet up to ``at`` (cumulative)."""


class Statement(BaseModel):
    machine: str
    account: str
    balance: int
    lines: list[StatementLineOut]
    earnings: list[EarningsPoint]


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=4000)


class ChatLine(BaseModel):
    role: Literal["you", "machine"]
    text: str


class ProposalCreate(BaseModel):
    kind: Literal["maintenance", "pricing", "territory", "payout", "park", "resume", "relocate", "retire", "expense"]
    title: str | None = Field(default=None, max_length=200)
    rationale: str = Field(default="", max_length=2000)
    budget: str | None = Field(default=None, pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
    """Amounts in units as text (``12.50``), as on the command line."""
    price_floor: str | None = Field(default=None, pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
    margin_bps: str | None = Field(default=None, pattern=r"^[0-9]{1,6}$")
    retain_bps: str | None = Field(default=None, pattern=r"^[0-9]{1,6}$")
    regions: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,59}(,[a-z0-9][a-z0-9_-]{0,59}){0,9}$")
    territory: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,59}(,[a-z0-9][a-z0-9_-]{0,59}){0,9}$")
    region: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,59}$")
    cost: str | None = Field(default=None, pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
    amount: str | None = Field(default=None, pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
    payee: str | None = Field(default=None, max_length=200)


class Ballot(BaseModel):
    """A ballot signed by the holder's own key (``ledger.sign_ballot``), for clients that keep it."""

    proposal_id: str = Field(min_length=1, max_length=100)
    holder: str = Field(min_length=1, max_length=200)
    """The account whose shares vote (``holder:alice``); the principal's key must own it."""
    choice: Literal["yes", "no", "abstain"]
    voter: str = Field(min_length=8, max_length=200)
    """The did that signed."""
    sig: str = Field(max_length=200)


class VoteRequest(BaseModel):
    choice: Literal["yes", "no", "abstain"]
    ballot: Ballot | None = None
    """Omitted: the server signs with the holder's key it keeps (the demo's custodial keys)."""


class VoteResult(BaseModel):
    proposal: ProposalRow
    said: str


class PrincipalCreate(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """No dots: the name becomes the requester wallet ``requester:{name}``, the namespace of its job ids."""
    did: str = Field(pattern=DID_PATTERN)
    operator_of: list[str] = []
    """Machines to grant the operator role on (``*`` for all)."""
    admin: bool = False
    requester_budget: int = Field(default=0, ge=0, le=10**15)
    """Opens (and funds) a requester wallet owned by this key."""


# -- the ledger over HTTP (server.escrows) -----------------------------------------------------

class MarketClock(BaseModel):
    """The market's time, for a requester outside TAMC's processes that signs envelopes (``ts``) and
    sets deadlines in it: in real life the wall clock at speed 1; a sped-up simulation runs faster."""

    now_ms: int
    """Epoch milliseconds on the market's clock when the server answered."""
    speed: float
    """Market seconds per real second: add ``elapsed real seconds × speed × 1000`` to ``now_ms``."""
    protocol: int
    topic_prefix: str


class RegisteredMachine(BaseModel):
    machine_id: str
    did: str
    """The did the machine registered with: its bids, offers and ``done`` count only when signed by it."""
    account: str


class AccountView(BaseModel):
    id: str
    kind: str
    balance: int
    """Micro-units."""


class EscrowOpen(BaseModel):
    """Hold money for a job: from ``payer`` (an account the caller's key owns) under ``job_id`` (in
    the caller's own namespace). Repeating the same request returns the same escrow."""

    job_id: str = Field(pattern=OWNED_PATTERN, max_length=128)
    """``{account}.{local}``: the account (the namespace) must be one the caller's key owns."""
    payer: str = Field(pattern=NAME_PATTERN)
    amount: int = Field(gt=0, le=10**15)
    expires_ms: int | None = Field(default=None, ge=0, le=253_402_300_799_999)  # up to the end of year 9999
    """Epoch ms on the market's clock (the job's deadline and a grace): past it anyone may have the
    escrow refunded to the payer, so money never waits on a requester that is gone. None: only the payer refunds."""


class EscrowRelease(BaseModel):
    machine_id: str = Field(pattern=NAME_PATTERN)
    """The registered machine whose wallet (``machine:{id}``) is paid the whole escrow."""


class EscrowView(BaseModel):
    job_id: str
    payer: str
    amount: int
    state: Literal["held", "released", "refunded"]
    opened_by: str | None
    """The posting that opened it (send it as ``posting`` in the ``funded`` event)."""
    closed_by: str | None
    """The posting that released or refunded it (``posting`` in ``paid`` and ``closed``)."""
    paid_to: str | None
    """The account the escrow went to when closed (a machine's wallet, or back to the payer)."""
    expires_at: datetime | None = None
    """Past this, anyone may have it refunded to the payer (``POST …/expire``)."""
