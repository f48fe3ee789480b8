"""What the ledger returns: plain pydantic records, detached from the database."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ISSUANCE", "MONEY", "Account", "AccountKind", "Escrow", "EscrowState", "Leg", "Posting", "StatementLine",
    "machine_wallet", "maintenance_budget", "reserve", "share_asset",
]

MONEY = "unit"
"""The asset of money; amounts are micro-units of it."""

ISSUANCE = "system:issuance"
"""The one account allowed below zero: its balance is minus everything minted and not burnt."""


def share_asset(machine_id: str) -> str:
    """The asset id of a machine's share tokens."""
    return f"share:{machine_id}"


def machine_wallet(machine_id: str) -> str:
    """The machine's wallet: jobs pay into it, it pays its costs and its holders from it."""
    return f"machine:{machine_id}"


def reserve(machine_id: str) -> str:
    """Where the machine puts the wear each job costs, until maintenance spends it."""
    return f"reserve:{machine_id}"


def maintenance_budget(machine_id: str) -> str:
    """A maintenance budget the holders approved: the machine pays the technician's job from it."""
    return f"maintenance:{machine_id}"


class AccountKind(StrEnum):
    WALLET = "wallet"
    ESCROW = "escrow"
    SYSTEM = "system"


class EscrowState(StrEnum):
    HELD = "held"
    RELEASED = "released"
    REFUNDED = "refunded"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class Account(_Record):
    id: str
    kind: AccountKind
    owner: str | None = None


class Leg(_Record):
    account: str
    asset: str
    amount: int
    """Signed: negative leaves the account, positive enters it. A posting's legs sum to zero per asset."""


class Posting(_Record):
    id: str
    key: str
    kind: str
    memo: str
    created_at: datetime
    legs: tuple[Leg, ...]
    replayed: bool = False
    """True when this call repeated an idempotency key and nothing new was written."""


class Escrow(_Record):
    job_id: str
    account: str
    payer: str
    amount: int
    state: EscrowState
    expires_at: datetime | None = None
    """Past this, anyone may have it refunded to the payer."""


class StatementLine(_Record):
    posting_id: str
    key: str = ""
    """The posting's idempotency key, which names what it was for (``release:{job}``, ``expense:…``)."""
    kind: str
    memo: str
    created_at: datetime
    asset: str
    amount: int
