"""What every route shares: the server's context, who is asking, and the refusals each may answer.

A route gets the context and the caller as typed dependencies (``Ctx``, ``Caller``; ``Reader``,
``Holder`` and ``Operator`` also check the caller's role on the machine in the path), never from
module globals; the app carries the context in ``app.state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agents.chat import ChatHistory, MachineChat
from core.errors import NotAuthenticated, UnknownAccount, UnknownMachine
from server.access import Access, Principal, Role
from server.console import Console
from server.desk import JobDesk
from server.escrows import Escrows
from server.feed import Feed, LiveEvent
from server.metrics import Metrics
from server.schemas import MachineSummary, Problem

if TYPE_CHECKING:
    from agents.node import MachineNode
    from market.city import City

__all__ = [
    "CONTROL_REFUSALS",
    "READERS",
    "REFUSALS",
    "STREAM_REFUSALS",
    "Caller",
    "Ctx",
    "Holder",
    "Limit",
    "OnMachine",
    "Operator",
    "Reader",
    "ServerContext",
    "balance",
    "fleet_roles",
    "machines_of",
    "stream",
    "summary",
]


_REFUSED = {
    400: "Bad input; the detail says what to fix",
    401: "No valid bearer token",
    403: "The principal lacks the role this needs on that machine",
    404: "No such machine, proposal or job",
    409: "The ledger or the proposal's state refuses it (not enough money, voting closed)",
}
CONTROL_REFUSALS: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "Not an operator of the machine, or the machine is held by someone else (take over first)"},
    409: {"model": Problem, "description": "The machine cannot do that now (its state), or not at all"},
    502: {"model": Problem, "description": "The real machine's server failed"},
    504: {"model": Problem, "description": "The machine did not answer in time (offline?)"},
}
REFUSALS: dict[int | str, dict[str, Any]] = {code: {"model": Problem, "description": text} for code, text in _REFUSED.items()}
STREAM_REFUSALS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, text in _REFUSED.items()
}
"""A stream's refusals are JSON, not events: they come before the stream starts."""
READERS = (Role.STAKEHOLDER, Role.OPERATOR)
Limit = Query(ge=1, le=1000)


@dataclass
class ServerContext:
    city: City
    access: Access
    feed: Feed
    desk: JobDesk
    chats: ChatHistory
    metrics: Metrics
    console: Console
    escrows: Escrows

    def node(self, machine_id: str) -> MachineNode:
        node = self.city.node(machine_id)
        if node is None:
            raise UnknownMachine(f"no machine {machine_id!r} in this city (GET /v1/machines lists them)")
        return node

    def chat(self, machine_id: str) -> MachineChat:
        return MachineChat(self.node(machine_id).deps, self.chats, self.city.agent)


bearer = HTTPBearer(auto_error=False, description="A token from POST /v1/auth/token (or printed by `tamc serve`)")


def context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(context)]


def principal(ctx: Ctx, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    if cred is None:
        raise NotAuthenticated("send 'Authorization: Bearer <token>' (log in at POST /v1/auth/challenge, then /v1/auth/token)")
    return ctx.access.authenticate(cred.credentials)


Caller = Annotated[Principal, Depends(principal)]


@dataclass
class OnMachine:
    """A caller allowed on a machine, with their roles there."""

    principal: Principal
    machine_id: str
    roles: set[Role]


def on_machine(*allowed: Role) -> Callable[..., OnMachine]:
    def check(ctx: Ctx, caller: Caller, machine_id: str) -> OnMachine:
        ctx.node(machine_id)
        return OnMachine(caller, machine_id, ctx.access.require(caller, machine_id, *allowed))

    return check


Reader = Annotated[OnMachine, Depends(on_machine(*READERS))]
Holder = Annotated[OnMachine, Depends(on_machine(Role.STAKEHOLDER))]
Operator = Annotated[OnMachine, Depends(on_machine(Role.OPERATOR))]


def machines_of(ctx: ServerContext) -> list[MachineNode]:
    seen: dict[str, MachineNode] = {}
    for node in list(ctx.city.nodes):
        seen[node.id] = node  # a machine re-made under the same id: the latest
    return list(seen.values())


def fleet_roles(ctx: ServerContext, caller: Principal) -> dict[str, list[Role]]:
    """The caller's roles on every machine, reading its accounts and grants once."""
    owned, granted = ctx.access.accounts(caller.did), ctx.access.granted(caller.did)
    return {n.id: sorted(ctx.access.roles(caller.did, n.id, owned=owned, granted=granted)) for n in machines_of(ctx)}


def summary(ctx: ServerContext, node: MachineNode, roles: list[Role]) -> MachineSummary:
    t = ctx.feed.telemetry.get(node.id)
    presence = ctx.feed.presence.get(node.id)
    p = node.profile
    return MachineSummary(id=node.id, name=p.name, kind=p.kind.value, region=p.region, status=node.standing,
                          online=presence is not None and presence.state == "online", state=t.state.value if t else None,
                          wear_pct=round(t.wear_pct, 3) if t else None, progress=round(t.progress, 4) if t else None,
                          position=t.position if t else None, roles=roles)


def balance(ctx: ServerContext, account: str) -> int:
    try:
        return ctx.city.ledger.balance(account)
    except UnknownAccount:
        return 0


async def stream(ctx: ServerContext, accept: Callable[[LiveEvent], bool]) -> AsyncIterator[LiveEvent]:
    sub = ctx.feed.subscribe(accept)
    try:
        while True:
            yield await sub.queue.get()
    finally:
        sub.close()
