"""The operator console: open handoffs, commands relayed to a machine, the command audit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from ledger.operations import CommandRecord, HandoffRecord
from server.access import Role
from server.console import ControlReply, ControlRequest
from server.context import CONTROL_REFUSALS, REFUSALS, Caller, Ctx, Limit, Operator, Reader, fleet_roles

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.get("/v1/handoffs", tags=["console"])
def handoffs(ctx: Ctx, caller: Caller) -> list[HandoffRecord]:
    """Open handoffs (pending, or taken by an operator) on the machines the caller operates, oldest first."""
    roles = fleet_roles(ctx, caller)
    ops = ctx.access.operations
    return [h for h in ops.open_handoffs() if {Role.OPERATOR, Role.ADMIN} & set(roles.get(h.machine_id, []))]


@router.post("/v1/machines/{machine_id}/control", tags=["console"], responses=CONTROL_REFUSALS)
def control(ctx: Ctx, on: Operator, body: ControlRequest) -> ControlReply:
    """Send a command to the machine as its operator, and get its answer: ``takeover`` first (the
    agent stops acting on the machine at once), then ``pause``, ``resume``, ``cancel``, ``set``,
    ``move_to``; ``handback`` with a decision returns the machine to its agent. Each command is
    audited by the machine."""
    reply = ctx.console.send(on.principal.did, on.machine_id, body)
    ctx.metrics.commands.labels(body.command).inc()
    return reply


@router.get("/v1/machines/{machine_id}/control/audit", tags=["console"])
def control_audit(ctx: Ctx, on: Reader, limit: Annotated[int, Limit] = 200) -> list[CommandRecord]:
    """Every command sent to the machine, newest first: who, when, what, and what came of it."""
    return ctx.access.operations.audit_log(on.machine_id, limit=limit)
