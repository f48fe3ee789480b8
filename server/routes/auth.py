"""Logging in with a did:key (challenge, signed token), who the caller is, and admins registering principals."""

from __future__ import annotations

from fastapi import APIRouter

from core.errors import Forbidden
from server.access import Role
from server.context import REFUSALS, Caller, Ctx, fleet_roles
from server.schemas import ChallengeRequest, ChallengeResponse, Me, PrincipalCreate, TokenResponse

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.post("/v1/auth/challenge", tags=["auth"])
def challenge(ctx: Ctx, body: ChallengeRequest) -> ChallengeResponse:
    """A nonce to sign with the principal's key: sign the ``sign`` document (``ledger.sign_document``
    with ``signer_field="did"``) and send it to ``/v1/auth/token``."""
    nonce = ctx.access.challenge(body.did)
    return ChallengeResponse(nonce=nonce, sign={"type": "tamc-login", "nonce": nonce, "did": body.did})


@router.post("/v1/auth/token", tags=["auth"])
def token(ctx: Ctx, signed: dict[str, str]) -> TokenResponse:
    value, expires = ctx.access.login(signed)
    principal = ctx.access.authenticate(value)
    return TokenResponse(token=value, expires_at=expires, did=principal.did, name=principal.name)


@router.get("/v1/me", tags=["auth"])
def me(ctx: Ctx, caller: Caller) -> Me:
    roles = fleet_roles(ctx, caller)
    wallet = ctx.access.requester_wallet(caller.did)
    return Me(did=caller.did, name=caller.name, admin=ctx.access.is_admin(caller.did),
              roles={m: r for m, r in roles.items() if r}, requester_wallet=wallet,
              balance=ctx.city.ledger.balance(wallet) if wallet else None)


@router.post("/v1/admin/principals", tags=["admin"], status_code=201)
def add_principal(ctx: Ctx, caller: Caller, body: PrincipalCreate) -> Me:
    """Register a key, grant it roles, open its requester wallet (admins only)."""
    if not ctx.access.is_admin(caller.did):
        raise Forbidden(f"{caller.name} is not an admin")
    from ledger import settlement

    principal = ctx.access.register(body.did, body.name)
    for machine_id in body.operator_of:
        if machine_id != "*":
            ctx.node(machine_id)
        ctx.access.grant(principal.did, Role.OPERATOR, machine_id)
    if body.admin:
        ctx.access.grant(principal.did, Role.ADMIN)
    if body.requester_budget and ctx.access.requester_wallet(principal.did) is None:
        settlement.open_requester(ctx.city.ledger, principal.name, principal.did, body.requester_budget)
    return me(ctx, principal)
