"""Service routes: health and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.context import REFUSALS, Ctx
from server.schemas import Health

__all__ = ["router"]

router = APIRouter(responses=REFUSALS)


@router.get("/health", tags=["service"])
def health(ctx: Ctx) -> Health:
    online = sum(1 for p in list(ctx.feed.presence.values()) if p.state == "online")
    hub = ctx.feed.hub.connected
    return Health(status="ok" if hub else "degraded", hub=hub, machines=len(ctx.city.nodes), online=online,
                  sim_hours=round(ctx.city.hours(), 4),
                  model=ctx.city.config.model.label() if ctx.city.agent is not None else "rules")


@router.get("/metrics", tags=["service"], response_class=Response,
         responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}})


def metrics(ctx: Ctx) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
