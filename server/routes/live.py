"""Live streams (server-sent events) of the fleet and of one machine, fed by the hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse

from server.access import Role
from server.context import REFUSALS, STREAM_REFUSALS, Caller, Ctx, Reader, fleet_roles, stream
from server.feed import LiveEvent

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.get("/v1/stream", tags=["live"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
async def fleet_stream(ctx: Ctx, caller: Caller) -> AsyncIterator[LiveEvent]:
    """Telemetry and presence of every machine, for the fleet map; and handoffs on the machines the
    caller operates, for the console's queue."""
    operated = {m for m, roles in (await asyncio.to_thread(fleet_roles, ctx, caller)).items()
                if {Role.OPERATOR, Role.ADMIN} & set(roles)}

    def accept(e: LiveEvent) -> bool:
        return e.type in ("telemetry", "presence") or (e.type == "handoff" and e.machine_id in operated)

    async for event in stream(ctx, accept):
        yield event


@router.get("/v1/machines/{machine_id}/stream", tags=["live"], response_class=EventSourceResponse, responses=STREAM_REFUSALS)
async def machine_stream(ctx: Ctx, on: Reader) -> AsyncIterator[LiveEvent]:
    """Everything about one machine as it happens: telemetry, presence, its job events, votes and
    decisions on its proposals. The last telemetry comes first."""
    last = ctx.feed.telemetry.get(on.machine_id)
    if last is not None:
        yield LiveEvent(type="telemetry", machine_id=on.machine_id, data=last.model_dump(mode="json"))
    async for event in stream(ctx, lambda e: e.machine_id == on.machine_id):
        yield event
