"""Every money movement of a job, in one place, each under an idempotency key derived from the job,
so a re-delivered message or a restarted process repeats a posting instead of doubling it.

Accounts: ``machine:{id}`` (the machine's wallet, owned by its did: the registry a requester checks
a bid's signer against), ``reserve:{id}`` (its wear reserve), ``holder:{name}`` (stakeholders),
``requester:{name}``, and the sinks ``utility:energy`` and ``supplier:materials``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from core.errors import EscrowClosed, EscrowExists, SharesAlreadyIssued, UnknownAccount
from ledger import AccountKind, Ledger
from ledger.holders import holder_account
from ledger.models import machine_wallet, maintenance_budget, reserve
from ledger.payout import pay_holders

__all__ = [
    "ENERGY",
    "MATERIALS",
    "JobCost",
    "JobCosts",
    "account_owner",
    "expire_due",
    "expire_job",
    "fund_job",
    "holder",
    "machine_owner",
    "machine_wallet",
    "maintenance_budget",
    "open_requester",
    "paid",
    "pay_job",
    "refund_job",
    "register_machine",
    "requester_account",
    "reserve",
    "settle_costs",
]

ENERGY = "utility:energy"
MATERIALS = "supplier:materials"
MAINTENANCE = "supplier:maintenance"
"""Technicians and parts: where the machine's agent pays maintenance expenses."""


class JobCost(Protocol):
    """What the rule engine priced a job's costs at (``pricing.rules.CostBreakdown`` is one): the
    money side reads these fields alone, so the ledger needs nothing of the pricing."""

    @property
    def energy(self) -> int: ...
    @property
    def travel(self) -> int: ...
    @property
    def wear(self) -> int: ...
    @property
    def consumables(self) -> int: ...
    @property
    def fixed(self) -> int: ...


def holder(name: str) -> str:
    """A stakeholder's account: ``holder:{name}``; an account id (``dao:…``, ``machine:…``) stays as it is."""
    return holder_account(name)


class JobCosts(BaseModel):
    """What a finished job cost the machine in cash and wear, and the rest that goes to its owners."""

    model_config = ConfigDict(frozen=True)

    price: int
    energy: int
    wear: int
    consumables: int
    fixed: int = 0
    """The job's share of the machine's fixed costs (rent, insurance), priced into it."""

    @classmethod
    def of(cls, price: int, cost: JobCost) -> JobCosts:
        return cls(price=price, energy=cost.energy + cost.travel, wear=cost.wear, consumables=cost.consumables, fixed=cost.fixed)

    @property
    def paid_out(self) -> int:
        return self.energy + self.wear + self.consumables

    @property
    def to_owners(self) -> int:
        return max(self.price - self.paid_out, 0)

    def kept(self, retain_bps: int | None) -> int:
        """What the machine keeps of the job's profit under a payout policy: the job's share of fixed
        costs, then ``retain_bps`` of the rest. None keeps nothing (no payout policy: all to the owners)."""
        if retain_bps is None:
            return 0
        fixed = min(self.to_owners, self.fixed)
        return fixed + (self.to_owners - fixed) * retain_bps // 10_000


def _open(ledger: Ledger, account: str, kind: AccountKind = AccountKind.WALLET, owner: str | None = None) -> None:
    try:
        ledger.account(account)
    except UnknownAccount:
        ledger.open_account(account, kind=kind, owner=owner)


def register_machine(ledger: Ledger, machine_id: str, did: str, holders: Mapping[str, int]) -> None:
    """Open the machine's wallet (owned by ``did``) and reserve, and issue its shares once.
    Safe to repeat: a machine restarting registers again and nothing changes."""
    try:
        existing = ledger.account(machine_wallet(machine_id))
    except UnknownAccount:
        ledger.open_account(machine_wallet(machine_id), owner=did)
    else:
        if existing.owner != did:
            raise UnknownAccount(
                f"machine {machine_id!r} is registered to {existing.owner}, not {did}; use that machine's key"
            )
    for account in (reserve(machine_id), ENERGY, MATERIALS, MAINTENANCE, *(holder(h) for h in holders)):
        _open(ledger, account, AccountKind.SYSTEM if account in (ENERGY, MATERIALS, MAINTENANCE) else AccountKind.WALLET)
    with contextlib.suppress(SharesAlreadyIssued):
        ledger.issue_shares(machine_id, {holder(h): u for h, u in holders.items()}, key=f"shares:{machine_id}")


def machine_owner(ledger: Ledger, machine_id: str) -> str | None:
    """The did a machine registered with, or None if it never did."""
    try:
        return ledger.account(machine_wallet(machine_id)).owner
    except UnknownAccount:
        return None


def account_owner(ledger: Ledger, account: str) -> str | None:
    """The did that owns ``account`` (None: no such account, or nobody's)."""
    try:
        return ledger.account(account).owner
    except UnknownAccount:
        return None


def requester_account(name: str) -> str:
    return f"requester:{name}"


def open_requester(ledger: Ledger, name: str, did: str, budget: int) -> str:
    account = requester_account(name)
    _open(ledger, account, owner=did)
    if budget:
        ledger.mint(account, budget, key=f"budget:{name}", memo="requester budget")
    return account


def fund_job(ledger: Ledger, job_id: str, payer: str, price: int, *, expires_at: datetime | None = None) -> str:
    """Hold the price in escrow; the posting id goes into the ``funded`` event. Past ``expires_at``
    (the job's deadline and a grace) anyone may have it refunded to the payer (``expire_job``)."""
    try:
        return ledger.open_escrow(job_id, payer, price, key=f"escrow:{job_id}", memo=f"job {job_id}", expires_at=expires_at).id
    except EscrowExists:  # opened earlier under this very key: a retry after a crash
        posting = ledger.posting(f"escrow:{job_id}")
        if posting is None:
            raise
        return posting.id


def pay_job(ledger: Ledger, job_id: str, machine_id: str) -> str:
    return ledger.release_escrow(job_id, machine_wallet(machine_id), key=f"release:{job_id}", memo=f"job {job_id} done").id


def paid(ledger: Ledger, job_id: str, machine_id: str) -> int:
    """What the job's escrow released to the machine's wallet (0: not released, or to someone else)."""
    posting = ledger.posting(f"release:{job_id}")
    wallet = machine_wallet(machine_id)
    return sum(leg.amount for leg in posting.legs if leg.account == wallet and leg.amount > 0) if posting else 0


def refund_job(ledger: Ledger, job_id: str) -> str:
    return ledger.refund_escrow(job_id, key=f"refund:{job_id}", memo=f"job {job_id} not done").id


def expire_job(ledger: Ledger, job_id: str) -> str:
    """Refund an expired escrow to its payer, whoever asks (``EscrowNotExpired`` before then). The
    key is the payer's own refund's: a job is refunded once, whichever of the two comes first."""
    return ledger.expire_escrow(job_id, key=f"refund:{job_id}", memo=f"job {job_id} not done").id


def expire_due(ledger: Ledger) -> list[str]:
    """Refund every escrow past its expiry (a requester that never came back); the jobs refunded."""
    done = []
    for job_id in ledger.expired():
        try:
            expire_job(ledger, job_id)
        except EscrowClosed:  # closed meanwhile by its payer or another sweep
            continue
        done.append(job_id)
    return done


def settle_costs(ledger: Ledger, job_id: str, machine_id: str, costs: JobCosts, *, retain_bps: int | None = None) -> int:
    """The machine pays its energy and materials, puts wear into its reserve, keeps what its payout
    policy says (``JobCosts.kept``), and pays the rest to its shareholders pro rata, on through any
    collective among them. Returns what the holders were paid."""
    wallet = machine_wallet(machine_id)
    moves = [(wallet, dest, amount) for dest, amount in ((ENERGY, costs.energy), (reserve(machine_id), costs.wear),
                                                          (MATERIALS, costs.consumables)) if amount]
    if moves:  # one posting for the three: one write, all or nothing
        ledger.transfers(moves, key=f"costs:{job_id}:{machine_id}", memo=f"job {job_id} energy, wear and materials")
    owed = costs.to_owners - costs.kept(retain_bps)
    if owed:
        pay_holders(ledger, machine_id, wallet, owed, key=f"split:{job_id}:{machine_id}", memo=f"job {job_id}")
    return owed
