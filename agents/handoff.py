"""When a machine asks a person for help: the checks a job workflow runs before and during a job.

Pure functions over the profile, the charter, the job and a telemetry reading, so the same checks
run in the workflow, in evals and in tests. Each answer says what tripped, with the numbers, and
what the agent proposes the operator do.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ledger.charter import Charter
from machines.driver import SAFE_LIMITS_C, WORKING_TEMPS, Telemetry
from machines.job import JobSpec
from machines.profile import MachineProfile

__all__ = ["BATTERY_SLACK_PCT", "WEAR_SPIKE_PCT", "Concern", "before_start", "during_job"]

WEAR_SPIKE_PCT = 5.0
"""Wear gained during one job beyond what the job should cost that counts as a spike."""
BATTERY_SLACK_PCT = 1.0
"""A vehicle starts a job with the charge its route needs; this much below it (rounding, a detour)
is still fine, more is a battery too low for the route."""
ENVELOPE_FILL = 0.9
"""Share of the build volume a part may fill in any dimension before a person looks at it."""


class Concern(BaseModel):
    """Why a job needs a person, and what the agent proposes they do."""

    model_config = ConfigDict(frozen=True)

    reason: str
    """``anomaly.temperature``, ``anomaly.wear``, ``anomaly.battery``, ``anomaly.incident``, ``envelope``,
    ``low-confidence``, ``charter``, or ``operator`` (a person took over unasked)."""
    detail: str
    proposal: str
    context: dict[str, Any] = {}


def before_start(profile: MachineProfile, job: JobSpec, *, price: int, hours: float, charter: Charter,
                 confidence: float | None = None) -> Concern | None:
    """A job the charter reserves for people, outside the machine's normal envelope, or won on a
    bid the model was unsure of, waits for a person's go-ahead before it starts."""
    if job.capability in charter.review_capabilities:
        return Concern(reason="charter", detail=f"the charter has people review every {job.capability!r} job",
                       proposal="check the job, then hand back with continue (or abort and refund)",
                       context={"capability": job.capability})
    if charter.review_above is not None and price > charter.review_above:
        return Concern(reason="charter", detail=f"price {price} is above the charter's review limit {charter.review_above}",
                       proposal="check the job, then hand back with continue (or abort and refund)",
                       context={"price": price, "review_above": charter.review_above})
    if hours > charter.envelope_hours:
        return Concern(reason="envelope", detail=f"the job takes {hours:.1f} h, beyond the machine's {charter.envelope_hours:g} h envelope",
                       proposal="watch the first hour, then hand back with continue", context={"hours": round(hours, 3)})
    if profile.fab is not None and job.size_mm is not None:
        volume = profile.fab.build_volume_mm
        fills = [s / v for s, v in zip(job.size_mm, volume, strict=True) if v]
        if fills and max(fills) > ENVELOPE_FILL:
            return Concern(reason="envelope", detail=f"the part {job.size_mm} mm fills {max(fills):.0%} of the build volume {volume} mm",
                           proposal="check the part fits and the first layer sticks, then hand back with continue",
                           context={"size_mm": list(job.size_mm), "build_volume_mm": list(volume)})
    if confidence is not None and confidence < charter.confidence_floor:
        return Concern(reason="low-confidence", detail=f"the model bid with confidence {confidence:.2f}, under the charter's floor {charter.confidence_floor:.2f}",
                       proposal="check the job is one this machine can do well, then hand back with continue or abort",
                       context={"confidence": confidence})
    return None


def during_job(profile: MachineProfile, reading: Telemetry, *, wear_at_start: float, expected_wear: float,
               km_left: float = 0.0) -> Concern | None:
    """A reading that shows the machine in trouble: a temperature past its safe limit, wear rising
    much faster than the job should cost, a battery that will not last the route, an incident."""
    context: dict[str, Any] = {"reading": reading.model_dump(mode="json")}
    for name, temp in reading.temperatures_c.items():
        limit = SAFE_LIMITS_C.get(name)
        if limit is not None and temp > limit:
            normal = WORKING_TEMPS[profile.kind].get(name, limit)
            return Concern(reason="anomaly.temperature", detail=f"{name} at {temp:.0f} °C, past its safe limit of {limit:g} °C",
                           proposal=f"keep it paused to cool, set {name} back to {normal:g} °C, then resume",
                           context={**context, "sensor": name, "limit_c": limit})
    gained = reading.wear_pct - wear_at_start
    if gained > expected_wear + WEAR_SPIKE_PCT:
        return Concern(reason="anomaly.wear", detail=f"wear rose {gained:.1f} % during the job, {expected_wear:.2f} % expected",
                       proposal="inspect the machine; abort and refund if it is damaged, continue if the reading was wrong",
                       context={**context, "wear_gained_pct": round(gained, 3), "expected_pct": round(expected_wear, 3)})
    vehicle = profile.vehicle
    if vehicle is not None and reading.battery_pct is not None:
        need = 100 * km_left * vehicle.energy_kwh_per_km / vehicle.battery_kwh
        if reading.battery_pct + BATTERY_SLACK_PCT < need:
            return Concern(reason="anomaly.battery", detail=f"battery at {reading.battery_pct:.0f} %, {need:.0f} % needed for the {km_left:.1f} km left",
                           proposal="move to the nearest charger, or abort and refund so the runner-up takes the job",
                           context={**context, "km_left": round(km_left, 3), "need_pct": round(need, 2)})
    if reading.incident:
        return Concern(reason="anomaly.incident", detail=reading.incident,
                       proposal="check the vehicle and its passengers; abort and refund, or continue when it is safe",
                       context=context)
    return None
