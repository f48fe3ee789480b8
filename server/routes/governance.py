"""The machine's mini-DAO: proposals opened and listed, votes (signed by the holder or by the server for them)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from core.errors import Forbidden, InputError, VoteRefused
from hub import topics
from hub.messages import GovernanceNotice
from ledger.holders import ProposalRow, cast_vote, list_proposals, open_proposal, resolve
from server.access import Principal, Role
from server.context import READERS, REFUSALS, Caller, Ctx, Holder, Reader, ServerContext
from server.feed import LiveEvent
from server.schemas import ProposalCreate, VoteRequest, VoteResult

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.get("/v1/machines/{machine_id}/proposals", tags=["governance"])
def proposals(ctx: Ctx, on: Reader, state: Literal["open", "passed", "rejected", "executed", "failed"] | None = None
              ) -> list[ProposalRow]:
    return list_proposals(ctx.city.governance, on.machine_id, state)


@router.post("/v1/machines/{machine_id}/proposals", tags=["governance"], status_code=201)
def propose(ctx: Ctx, on: Holder, body: ProposalCreate) -> ProposalRow:
    """Open a proposal as a holder of the machine's shares; its payload comes from the fields
    that apply to its kind (as ``tamc propose`` takes them)."""
    account = _holder(ctx, on.principal, on.machine_id)
    fields = body.model_dump(exclude={"kind", "title", "rationale"})
    p = open_proposal(ctx.city.ledger, ctx.city.governance, None, on.machine_id, body.kind, account,
                      title=body.title, fields=fields, rationale=body.rationale)
    row = _row(ctx, p.id)
    ctx.feed.emit(LiveEvent(type="proposal", machine_id=on.machine_id, data=row.model_dump(mode="json")))
    return row


@router.get("/v1/proposals/{proposal_id}", tags=["governance"])
def proposal(ctx: Ctx, caller: Caller, proposal_id: str) -> ProposalRow:
    p = resolve(ctx.city.governance, proposal_id)
    ctx.access.require(caller, p.machine_id, *READERS)
    return _row(ctx, p.id)


@router.post("/v1/proposals/{proposal_id}/votes", tags=["governance"])
def vote(ctx: Ctx, caller: Caller, proposal_id: str, body: VoteRequest) -> VoteResult:
    """Vote with the caller's shares: send a ballot signed with the holder's own key, or let the
    server sign with the key it keeps for the holder. A vote that settles the proposal executes it."""
    gov = ctx.city.governance
    p = resolve(gov, proposal_id)
    ctx.access.require(caller, p.machine_id, Role.STAKEHOLDER)
    account = _holder(ctx, caller, p.machine_id)
    if body.ballot is not None:
        ballot = body.ballot
        if ballot.proposal_id != p.id or ballot.choice != body.choice:
            raise InputError("the signed ballot names another proposal or choice than the request")
        if ballot.voter != caller.did:
            raise VoteRefused(f"the ballot is signed by {ballot.voter}, not by the caller's key {caller.did}")
        gov.vote(ballot.model_dump())
        p = gov.close(p.id)
        said = f"{ballot.holder} voted {body.choice}"
        if p.state == "passed":
            gov.execute(p.id, actor=ballot.holder)
            said += "; passed and executed"
    else:
        p, said = cast_vote(ctx.city.ledger, gov, ctx.city.keys, p.id, body.choice, account)
    ctx.metrics.votes.labels(body.choice).inc()
    p = gov.get(p.id)
    if p.state == "executed":
        ctx.feed.hub.send(topics.governance(p.machine_id), GovernanceNotice(
            machine_id=p.machine_id, proposal_id=p.id, kind=p.kind.value, state="executed"), ctx.city.keys.get_or_create("governance"))
    row = _row(ctx, p.id)
    ctx.feed.emit(LiveEvent(type="proposal", machine_id=p.machine_id, data=row.model_dump(mode="json")))
    return VoteResult(proposal=row, said=said)


def _holder(ctx: ServerContext, principal: Principal, machine_id: str) -> str:
    held = ctx.access.holdings(principal.did, machine_id)
    if not held:
        raise Forbidden(f"{principal.name} holds no shares of {machine_id}: only its stakeholders propose and vote")
    return max(held, key=lambda a: held[a])


def _row(ctx: ServerContext, proposal_id: str) -> ProposalRow:
    p = ctx.city.governance.get(proposal_id)
    return next(r for r in list_proposals(ctx.city.governance, p.machine_id, None) if r.id == proposal_id)
