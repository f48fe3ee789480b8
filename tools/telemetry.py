"""Telemetry tools: the machine's state now and its recent history, read-only."""

from __future__ import annotations

from typing import Any

from pydantic_ai import FunctionToolset, RunContext

from machines.driver import Telemetry
from tools.deps import MachineDeps

__all__ = ["machine_state", "telemetry_tools"]

telemetry_tools = FunctionToolset[MachineDeps](id="telemetry")


def machine_state(deps: MachineDeps) -> dict[str, Any]:
    """State, wear against its limit, temperatures or battery, energy used, and the queue."""
    m = deps.machine
    t = m.telemetry()
    status = m.machine_status()
    out: dict[str, Any] = {
        "machine": m.profile.id,
        "kind": m.profile.kind.value,
        "region": m.profile.region,
        "queue_jobs": status.queue_len,
        "queue_hours": round(status.queue_hours, 2),
        "wear_limit_pct": deps.policy.wear_limit_pct,
    }
    if t is None:
        out["telemetry"] = "not available (the machine has not reported yet)"
        return out
    out.update(_snapshot(t))
    out["wear_headroom_pct"] = round(deps.policy.wear_limit_pct - t.wear_pct, 3)
    return out


def _snapshot(t: Telemetry) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": t.at.isoformat(),
        "state": t.state.value,
        "wear_pct": round(t.wear_pct, 3),
        "temperatures_c": {k: round(v, 1) for k, v in t.temperatures_c.items()},
        "energy_used_kwh": round(t.energy_used_kwh, 3),
        "operating_hours": round(t.operating_hours, 3),
    }
    if t.job_id:
        out["job"] = {"id": t.job_id, "progress": round(t.progress, 3)}
    if t.battery_pct is not None:
        out["battery_pct"] = round(t.battery_pct, 1)
    if t.position is not None:
        out["position_km"] = [round(t.position.x_km, 2), round(t.position.y_km, 2)]
    return out


@telemetry_tools.tool
def current_state(ctx: RunContext[MachineDeps]) -> dict[str, Any]:
    """The machine's state now: working or idle, wear and its limit, temperatures or battery, energy, queue."""
    ctx.deps.record("current_state", True, "read")
    return machine_state(ctx.deps)


@telemetry_tools.tool
def telemetry_history(ctx: RunContext[MachineDeps], limit: int = 10) -> list[dict[str, Any]]:
    """The latest ``limit`` telemetry reports (at most 50), newest first: how wear, heat and charge moved."""
    limit = max(1, min(limit, 50))
    history = ctx.deps.machine.telemetry_history()[-limit:]
    ctx.deps.record("telemetry_history", True, f"{len(history)} reports")
    return [_snapshot(t) for t in reversed(history)]
