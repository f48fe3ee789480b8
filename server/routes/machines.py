"""The fleet and each machine: summary, detail, job queue, the wallet's statement, the cap table."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from agents.node import QueuedContract
from ledger import machine_wallet, reserve
from ledger.holders import shares
from machines.regions import Region
from server.context import REFUSALS, Caller, Ctx, Limit, Reader, balance, fleet_roles, machines_of, summary
from server.schemas import EarningsPoint, MachineDetail, MachineSummary, Shares, Statement, StatementLineOut

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.get("/v1/machines", tags=["machines"])
def machines(ctx: Ctx, caller: Caller) -> list[MachineSummary]:
    """The fleet: every machine in the city, with the caller's roles on each."""
    roles = fleet_roles(ctx, caller)
    return [summary(ctx, n, roles[n.id]) for n in machines_of(ctx)]


@router.get("/v1/regions", tags=["machines"])
def regions(ctx: Ctx, caller: Caller) -> list[Region]:
    """The city's regions (rectangles of its grid, in km), for the fleet map."""
    return list(ctx.city.regions)


@router.get("/v1/machines/{machine_id}", tags=["machines"])
def machine(ctx: Ctx, on: Reader) -> MachineDetail:
    node = ctx.node(on.machine_id)
    brief = summary(ctx, node, sorted(on.roles))
    return MachineDetail(**brief.model_dump(), profile=node.profile.model_dump(mode="json"),
                         telemetry=ctx.feed.telemetry.get(node.id) or node.telemetry(),
                         wallet=balance(ctx, machine_wallet(node.id)), reserve=balance(ctx, reserve(node.id)),
                         queue=node.job_queue())


@router.get("/v1/machines/{machine_id}/jobs", tags=["machines"])
def machine_jobs(ctx: Ctx, on: Reader) -> list[QueuedContract]:
    """The job queue: accepted jobs not yet paid, the running one first."""
    return ctx.node(on.machine_id).job_queue()


@router.get("/v1/machines/{machine_id}/statement", tags=["money"])
def statement(ctx: Ctx, on: Reader, limit: Annotated[int, Limit] = 200) -> Statement:
    """The machine wallet's ledger lines, newest first, and its earnings over time."""
    account = machine_wallet(on.machine_id)
    lines = ctx.city.ledger.statement(account, limit=None)
    series: list[EarningsPoint] = []
    revenue = net = 0
    for line in sorted(lines, key=lambda x: x.created_at):
        net += line.amount
        if line.kind == "escrow.release" and line.amount > 0:
            revenue += line.amount
        series.append(EarningsPoint(at=line.created_at, revenue=revenue, net=net))
    newest = sorted(lines, key=lambda x: x.created_at, reverse=True)[:limit]
    return Statement(machine=on.machine_id, account=account, balance=balance(ctx, account),
                     lines=[StatementLineOut(**x.model_dump(include=set(StatementLineOut.model_fields))) for x in newest],
                     earnings=series[-500:])


@router.get("/v1/machines/{machine_id}/shares", tags=["governance"])
def machine_shares(ctx: Ctx, on: Reader) -> Shares:
    data = shares(ctx.city.ledger, ctx.city.governance, on.machine_id)
    return Shares(**data, yours=ctx.access.holdings(on.principal.did, on.machine_id))
