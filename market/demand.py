"""The demand model: who wants what, where, when, and what it is worth to them.

Arrivals are Poisson per (region, kind), with a rate set so that the offered work is ``load``
times the hours the machines of that kind in that region have, shaped by the hour of the day
(quiet nights, morning and evening peaks). Each job gets a size (hours of work, log-normal), a
deadline (a multiple of its work), a value to its requester (a multiple of what it costs a
typical machine), and a budget, the reserve price, a little below that value. A share of the
requesters haggle (``haggle_share``): each gets a strategy with its own urgency, drawn from a stream
of its own, so a day without haggling is the same day it always was.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from machines.job import JobSpec
from machines.profile import MachineProfile
from machines.regions import Region
from machines.work import estimate
from pricing.haggle import RequesterStrategy
from pricing.rules import MachineStatus, decide

__all__ = ["FLAT", "HOURLY_SHAPE", "DemandModel", "JobRequest", "generate_jobs"]

HOURLY_SHAPE = (
    0.3, 0.2, 0.2, 0.2, 0.3, 0.5, 0.9, 1.5, 1.7, 1.4, 1.2, 1.2,
    1.3, 1.2, 1.1, 1.1, 1.3, 1.6, 1.7, 1.4, 1.0, 0.8, 0.6, 0.4,
)
"""Relative arrival rate by hour of the day (mean 1)."""
FLAT = (1.0,) * 24

MEAN_WORK_H = {"printer_3d": 2.5, "cnc_mill": 1.5, "laser_cutter": 0.75}
"""Typical hours of work per fabrication job; vehicle jobs are as long as their trips."""


class DemandModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    load: float = Field(default=0.85, gt=0)
    """Offered work as a share of the fleet's machine-hours (1.0 = exactly the capacity)."""
    hourly: tuple[float, ...] = Field(default=HOURLY_SHAPE, min_length=24, max_length=24)
    """Relative arrival rate by hour of the day; ``FLAT`` keeps demand at ``load`` all day."""
    deadline_factor: tuple[float, float] = (3.0, 8.0)
    """A job's deadline is its work time times a factor in this range (plus half an hour)."""
    value_factor: tuple[float, float] = (1.3, 3.0)
    """A job's value to its requester is the typical machine's least price (full cost or price
    floor) times this factor."""
    budget_share: tuple[float, float] = (0.85, 1.0)
    """The reserve price is this share of the value."""
    haggle_share: float = Field(default=0.0, ge=0, le=1)
    """The share of requesters that counter the bids (``RequesterStrategy``, urgency uniform in 0–1)."""


class JobRequest(BaseModel):
    """A job as the market feeds it: when it appears, the spec, the reserve and its private value."""

    model_config = ConfigDict(frozen=True)

    at_h: float
    job: JobSpec
    reserve: int
    value: int
    haggle: RequesterStrategy | None = None
    """How its requester haggles; None: it awards the best bid."""


def _groups(fleet: Sequence[MachineProfile], regions: Sequence[Region]) -> dict[tuple[str, str], list[MachineProfile]]:
    groups: dict[tuple[str, str], list[MachineProfile]] = defaultdict(list)
    for p in fleet:
        for r in regions:
            if r.name in p.territory:
                groups[(r.name, p.kind.value)].append(p)
    return dict(sorted(groups.items()))


def _make_job(rng: random.Random, job_id: str, region: Region, machines: list[MachineProfile], deadline_h: float) -> JobSpec:
    p = machines[0]
    kind = p.kind
    capability = p.capabilities[0]
    if p.vehicle is not None:
        payload = round(rng.uniform(0.2, min(m.vehicle.payload_kg for m in machines if m.vehicle) * 0.8), 2)
        return JobSpec(
            id=job_id, kind=kind, capability=capability, region=region.name, deadline_h=deadline_h,
            pickup=region.random_point(rng), dropoff=region.random_point(rng), payload_kg=payload,
            passengers=rng.randint(1, 2) if capability == "ride" else 0,
        )
    assert p.fab is not None
    common = set.intersection(*(set(m.fab.materials) for m in machines if m.fab))
    material = rng.choice(sorted(common or p.fab.materials))
    rate = min(m.fab.materials[material].rate_per_hour for m in machines if m.fab and material in m.fab.materials)
    hours = rng.lognormvariate(math.log(MEAN_WORK_H.get(kind.value, 1.0)), 0.5)
    volume = min((m.fab.build_volume_mm for m in machines if m.fab), key=lambda v: v[0] * v[1] * v[2])
    size = tuple(round(d * rng.uniform(0.2, 0.8), 1) for d in volume)
    return JobSpec(
        id=job_id, kind=kind, capability=capability, region=region.name, deadline_h=deadline_h,
        material=material, size_mm=size, amount=round(hours * rate, 2),
    )


def generate_jobs(
    fleet: Sequence[MachineProfile],
    regions: Sequence[Region],
    hours: float,
    *,
    seed: int,
    model: DemandModel | None = None,
    prefix: str = "j",
) -> list[JobRequest]:
    """A day (or ``hours``) of demand for ``fleet``, the same for the same seed."""
    model = model or DemandModel()
    rng = random.Random(seed)
    by_name = {r.name: r for r in regions}
    out: list[JobRequest] = []
    for (region_name, _kind), machines in _groups(fleet, regions).items():
        region = by_name[region_name]
        typical = machines[0]
        home = MachineStatus(position=region.center)
        # mean hours one job takes, sampled, so the arrival rate matches the machines' capacity
        # (a vehicle starts where its last job ended: somewhere in the region, not at its home)
        samples = [_make_job(rng, "sample", region, machines, 1e6) for _ in range(64)]
        mean_h = sum(estimate(typical, j, position=region.random_point(rng)).total_hours for j in samples) / len(samples)
        # a machine serving several regions lends each an equal share of its hours
        capacity = sum(1 / sum(1 for r in regions if r.name in m.territory) for m in machines)
        rate = model.load * capacity / max(mean_h, 1e-6)  # jobs per hour, on average
        hour = 0.0
        while hour < hours:
            n = _poisson(rng, rate * model.hourly[int(hour) % 24] * min(1.0, hours - hour))
            for at in sorted(hour + rng.random() * min(1.0, hours - hour) for _ in range(n)):
                probe = _make_job(rng, "probe", region, machines, 1e6)
                work_h = estimate(typical, probe, position=region.center).total_hours
                deadline = round(work_h * rng.uniform(*model.deadline_factor) + 0.5, 3)
                job = probe.model_copy(update={"deadline_h": deadline})
                quote = decide(typical, job, home)
                if quote.cost is None:
                    continue  # beyond what even an idle machine can do (too big for its range)
                least = max(quote.cost.total, typical.policy.price_floor)
                value = round(least * rng.uniform(*model.value_factor))
                reserve = round(value * rng.uniform(*model.budget_share))
                out.append(JobRequest(at_h=round(at, 6), job=job, reserve=reserve, value=value))
            hour += 1.0
    out.sort(key=lambda r: (r.at_h, r.job.region, r.job.kind.value))
    hagglers = random.Random(f"haggle-{seed}")  # its own stream: the day's jobs do not change with the share
    return [
        r.model_copy(update={"job": r.job.model_copy(update={"id": f"{prefix}{i:05d}-{r.job.region[0]}-{r.job.kind.value}"}),
                             "haggle": _strategy(hagglers, model.haggle_share)})
        for i, r in enumerate(out)
    ]


def _strategy(rng: random.Random, share: float) -> RequesterStrategy | None:
    haggles, urgency = rng.random() < share, rng.random()
    return RequesterStrategy(urgency=round(urgency, 3)) if haggles else None


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small rates of one hour of one region and kind."""
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
