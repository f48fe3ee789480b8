"""The ledger for a requester outside TAMC's processes (``server.escrows``): the market's clock, the
machines' registered dids, the caller's own accounts, and the escrows of its own jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path

from core.ids import NAME_PATTERN
from hub.envelope import PROTOCOL_VERSION
from hub.topics import PREFIX
from server.context import REFUSALS, Caller, Ctx
from server.schemas import AccountView, EscrowOpen, EscrowRelease, EscrowView, MarketClock, RegisteredMachine

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)

JobId = Annotated[str, Path(pattern=NAME_PATTERN, description="The job's id, ``{account}.{local}``")]
AccountId = Annotated[str, Path(pattern=NAME_PATTERN, description="A ledger account, ``requester:{name}``")]


@router.get("/v1/market/clock", tags=["ledger"])
def clock(ctx: Ctx, caller: Caller) -> MarketClock:
    """The market's time and speed: what an outside requester signs its envelopes' ``ts`` with and
    sets its deadlines in (in real life, the wall clock at speed 1)."""
    return MarketClock(now_ms=ctx.city.clock.ms(), speed=ctx.city.clock.speed, protocol=PROTOCOL_VERSION, topic_prefix=PREFIX)


@router.get("/v1/ledger/machines", tags=["ledger"])
def machines(ctx: Ctx, caller: Caller) -> list[RegisteredMachine]:
    """Every registered machine and its did: count a bid, offer, presence or ``done`` only when it
    is signed by the did its machine registered."""
    return ctx.escrows.machines()


@router.get("/v1/ledger/accounts", tags=["ledger"])
def accounts(ctx: Ctx, caller: Caller) -> list[AccountView]:
    """The accounts the caller's key owns, with their balances."""
    return ctx.escrows.accounts(caller)


@router.get("/v1/ledger/accounts/{account_id}", tags=["ledger"])
def account(ctx: Ctx, caller: Caller, account_id: AccountId) -> AccountView:
    return ctx.escrows.account(caller, account_id)


@router.post("/v1/ledger/escrows", tags=["ledger"], status_code=201)
def open_escrow(ctx: Ctx, caller: Caller, body: EscrowOpen) -> EscrowView:
    """Hold a job's price (once a machine has accepted the award), from an account the caller owns,
    under a job id in the caller's namespace; then send ``funded`` with ``opened_by`` as its posting."""
    expires = datetime.fromtimestamp(body.expires_ms / 1000, UTC) if body.expires_ms is not None else None
    return ctx.escrows.open(caller, body.job_id, body.payer, body.amount, expires)


@router.get("/v1/ledger/escrows/{job_id}", tags=["ledger"])
def escrow(ctx: Ctx, caller: Caller, job_id: JobId) -> EscrowView:
    return ctx.escrows.escrow(caller, job_id)


@router.post("/v1/ledger/escrows/{job_id}/release", tags=["ledger"])
def release(ctx: Ctx, caller: Caller, job_id: JobId, body: EscrowRelease) -> EscrowView:
    """Pay the escrow to the machine that did the job (after its ``done``); then send ``paid`` and
    ``closed`` with ``closed_by`` as the posting."""
    return ctx.escrows.release(caller, job_id, body.machine_id)


@router.post("/v1/ledger/escrows/{job_id}/refund", tags=["ledger"])
def refund(ctx: Ctx, caller: Caller, job_id: JobId) -> EscrowView:
    """Return the escrow to its payer (the job was not done); then send ``closed`` (``refunded``)."""
    return ctx.escrows.refund(caller, job_id)


@router.post("/v1/ledger/escrows/{job_id}/expire", tags=["ledger"])
def expire(ctx: Ctx, caller: Caller, job_id: JobId) -> EscrowView:
    """Refund an escrow past its expiry to its payer. Anyone logged in may ask (a machine whose
    requester is gone, an operator): the money goes back to the payer and nowhere else; 409 before
    the expiry."""
    return ctx.escrows.expire(job_id)
