"""The physics of a job on a machine: how long it takes, what it draws, how much it wears.

Pricing lives in the rule engine (``pricing.rules``); this module only measures. It assumes the
machine can do the job at all (capability and material checked by the caller).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from machines.job import JobSpec
from machines.profile import MachineProfile, Point

__all__ = ["WorkEstimate", "estimate"]


class WorkEstimate(BaseModel):
    model_config = ConfigDict(frozen=True)

    work_hours: float
    """Hours doing the job itself: printing, milling, cutting, or driving it from pickup to dropoff."""
    deadhead_km: float = 0.0
    """Vehicles: empty travel from where they are to the pickup."""
    deadhead_hours: float = 0.0
    trip_km: float = 0.0
    work_kwh: float
    deadhead_kwh: float = 0.0
    consumables: int = 0
    """Micro-units of material or tooling used up."""

    @property
    def total_hours(self) -> float:
        return self.work_hours + self.deadhead_hours

    @property
    def total_km(self) -> float:
        return self.deadhead_km + self.trip_km

    def wear_pct(self, profile: MachineProfile) -> float:
        return self.total_hours * profile.wear_pct_per_hour


def estimate(profile: MachineProfile, job: JobSpec, *, position: Point | None = None) -> WorkEstimate:
    if profile.vehicle is not None:
        v = profile.vehicle
        assert job.pickup is not None and job.dropoff is not None
        deadhead = (position or v.home).distance_to(job.pickup)
        trip = job.pickup.distance_to(job.dropoff)
        return WorkEstimate(
            work_hours=trip / v.speed_kmh,
            deadhead_km=deadhead,
            deadhead_hours=deadhead / v.speed_kmh,
            trip_km=trip,
            work_kwh=trip * v.energy_kwh_per_km,
            deadhead_kwh=deadhead * v.energy_kwh_per_km,
        )
    assert profile.fab is not None and job.material is not None and job.amount is not None
    material = profile.fab.materials[job.material]
    hours = job.amount / material.rate_per_hour
    return WorkEstimate(
        work_hours=hours,
        work_kwh=hours * profile.energy_kw,
        consumables=round(job.amount * material.price_per_unit),
    )
