"""The rule engine: the deterministic bid-or-decline decision on the critical path.

Price = cost × (1 + margin) × demand, rounded up to the price tick, at least the least acceptable
price, then held between the policy's floor and ceiling and under the requester's reserve. The least
acceptable price is cost while the machine's planned hours (or the work it expects, from the demand
it remembers at the coming hours of the day) fill little of its horizon, and rises
with the share ``z`` they fill as the online knapsack threshold does (Zhou, Chakrabarty & Lukose,
WINE 2008): ``cost × (U·e)^z / e`` above ``z0 = 1 / (1 + ln U)``, reaching ``U`` (the policy's
``demand_max``) when the horizon is full, so a busy machine turns cheap work away and keeps its
hours for work worth more. Cost = energy + wear + consumables + travel
(vehicles) + a share of fixed daily costs + overhead. Every rule that fires is recorded, so a
decision explains itself in one line. No I/O, no clock, no randomness: the same input gives the
same output, in microseconds.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.money import Micros, format_units
from machines.job import JobSpec
from machines.profile import MachineProfile, Point
from machines.regions import DEFAULT_REGIONS, Region, outside
from machines.work import WorkEstimate, estimate

__all__ = ["BPS", "CostBreakdown", "Decision", "DemandForecast", "MachineStatus", "MarketContext", "MemorySignal", "Rule", "decide", "job_cost",
           "reservation"]

BPS = 10_000


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class MemorySignal(_Frozen):
    """What the machine's memory of similar past jobs says a price should be, as a ratio to cost.

    Computed from stored outcomes (``memory.signals``) before the rules run, so the rule
    engine — and with it every fallback — prices from memory too, and stays pure."""

    target_bps: int = Field(gt=0)
    """Price over cost in basis points (13000 = price 1.3× cost)."""
    samples: int
    wins: int
    detail: str
    """Why, in one line: ``lost 5 of 6 similar jobs; winners bid 1.21× cost``."""
    cases: tuple[str, ...] = ()
    """The remembered jobs it rests on, as stored."""


class DemandForecast(_Frozen):
    """The work the machine expects to win within its planning horizon, from the demand it
    remembers at those hours of the day on earlier days (``memory.signals.demand_forecast``)."""

    wins: int
    """Jobs like this one it won at those hours."""
    hours: float
    """What they would take, at this job's hours each."""
    detail: str


class MarketContext(_Frozen):
    """What the machine knows of the market around it when it decides."""

    energy_price_per_kwh: Micros = 250_000
    """Micro-units per kWh (0.25 units by default)."""
    demand_index_bps: int = Field(default=BPS, gt=0)
    """Demand against supply for this kind and region: 10000 is balanced, 15000 is 1.5×."""
    memory: MemorySignal | None = None
    """The machine's own experience of similar jobs; when present (and the policy learns from
    memory) it sets the demand factor in place of the market-wide index."""
    forecast: DemandForecast | None = None
    """Work expected within the planning horizon: the least price counts the horizon as full as the
    planned work or the forecast, whichever is more."""
    regions: tuple[Region, ...] = DEFAULT_REGIONS
    """The city's regions with their bounds: a vehicle's job is checked against its territory by
    where it picks up, drives and drops off, not by the region the requester wrote on it."""


class MachineStatus(_Frozen):
    """The machine's own state that bears on a bid."""

    wear_pct: float = 0.0
    queue_len: int = 0
    queue_hours: float = 0.0
    """Hours of accepted work ahead of a new job."""
    planned_hours: float | None = None
    """Hours of all accepted work not yet done, whatever its deadline (None: ``queue_hours``)."""
    position: Point | None = None
    battery_pct: float | None = None
    standby: bool = False
    """Parked: it answers only at the policy's standby premium."""


class CostBreakdown(_Frozen):
    energy: int
    wear: int
    consumables: int
    travel: int
    fixed: int
    overhead: int

    @property
    def total(self) -> int:
        return self.energy + self.wear + self.consumables + self.travel + self.fixed + self.overhead

    @property
    def variable(self) -> int:
        """What this one job uses up (energy, wear, consumables, travel): the cost in welfare terms.
        Fixed costs and overhead are paid whether or not the job is done."""
        return self.energy + self.wear + self.consumables + self.travel


class Rule(_Frozen):
    code: str
    """Stable id, e.g. ``decline.material`` or ``price.floor``."""
    detail: str


class Decision(_Frozen):
    action: Literal["bid", "decline"]
    price: Micros | None = None
    eta_h: float | None = None
    """Hours from now until the job would be finished."""
    cost: CostBreakdown | None = None
    least: Micros | None = None
    """For a bid: the least price the machine accepts for the job (cost, raised by the capacity it
    keeps for better work and by the owners' floor); a negotiation never goes below it."""
    rules: tuple[Rule, ...]
    reason: str
    """The decision in one line."""


def decide(
    profile: MachineProfile,
    job: JobSpec,
    status: MachineStatus | None = None,
    market: MarketContext | None = None,
) -> Decision:
    status = status or MachineStatus()
    market = market or MarketContext()
    policy = profile.policy

    refusals = _static_refusals(profile, job, status, market.regions)
    if refusals:
        return _decline(refusals)

    work = estimate(profile, job, position=status.position)
    refusals = _dynamic_refusals(profile, job, status, work)
    charge_h = _charge_hours(profile, work, status)
    eta = round(status.queue_hours + charge_h + work.total_hours, 4)
    if refusals:
        return _decline(refusals, eta_h=eta)

    cost = job_cost(profile, work, market)
    fired: list[Rule] = []
    least, scarcity = reservation(profile, cost.total, status, market.forecast)
    if scarcity is not None:
        fired.append(scarcity)
    base = -(-cost.total * (BPS + policy.margin_bps) // BPS)
    fired.append(Rule(code="price.margin", detail=f"+{policy.margin_bps / 100:g}% margin on cost {format_units(cost.total)}"))
    if charge_h:
        fired.append(Rule(code="time.charge", detail=f"charges {charge_h * 60:.0f} min first"))

    learned = market.memory if policy.learn_from_memory else None
    if learned is not None:  # the demand factor that prices at the remembered ratio to cost
        demand = -(-learned.target_bps * BPS // (BPS + policy.margin_bps))
    else:
        demand = BPS + (market.demand_index_bps - BPS) * policy.demand_sensitivity_bps // BPS
    demand += status.queue_len * policy.backlog_bps_per_job
    demand = min(max(demand, policy.demand_min_bps), policy.demand_max_bps)
    price = max(-(-base * demand // BPS), least)
    if learned is not None:
        fired.append(Rule(code="price.memory", detail=f"demand ×{demand / BPS:.2f} from memory: {learned.detail} (queue {status.queue_len})"))
    elif demand != BPS:
        fired.append(Rule(code="price.demand", detail=f"demand ×{demand / BPS:.2f} (index {market.demand_index_bps / BPS:.2f}, queue {status.queue_len})"))
    if status.standby and policy.standby_premium_bps is not None:
        price = -(-price * (BPS + policy.standby_premium_bps) // BPS)
        fired.append(Rule(code="price.standby", detail=f"parked: +{policy.standby_premium_bps / 100:g}% standby premium, "
                                                       "so it takes only work the active machines leave"))
    price = -(-price // policy.price_tick) * policy.price_tick

    if price < policy.price_floor:
        fired.append(Rule(code="price.floor", detail=f"raised to the floor {format_units(policy.price_floor)}"))
        price = policy.price_floor
    if policy.price_ceiling is not None and price > policy.price_ceiling:
        if policy.price_ceiling < cost.total:
            return _decline([Rule(code="decline.ceiling", detail=f"ceiling {format_units(policy.price_ceiling)} is below cost {format_units(cost.total)}")], eta_h=eta)
        fired.append(Rule(code="price.ceiling", detail=f"capped at the ceiling {format_units(policy.price_ceiling)}"))
        price = policy.price_ceiling
    if job.max_price is not None and price > job.max_price:
        least = max(least, policy.price_floor)
        if job.max_price < least:
            return _decline([Rule(code="decline.reserve", detail=f"reserve {format_units(job.max_price)} is below our least price {format_units(least)}")], eta_h=eta)
        fired.append(Rule(code="price.reserve", detail=f"lowered to the reserve {format_units(job.max_price)}"))
        price = job.max_price

    parts = ", ".join(f"{name} {format_units(v)}" for name, v in cost if v)
    reason = f"bid {format_units(price)}: cost {format_units(cost.total)} ({parts}); " + "; ".join(r.detail for r in fired) + f"; ETA {eta:g} h"
    return Decision(action="bid", price=price, eta_h=eta, cost=cost, least=max(least, policy.price_floor), rules=tuple(fired),
                    reason=reason)


def reservation(profile: MachineProfile, cost: int, status: MachineStatus,
                forecast: DemandForecast | None = None) -> tuple[int, Rule | None]:
    """The least acceptable price of a job costing ``cost``, and the rule that raised it above cost
    (None while the planned hours, and the work ``forecast`` expects, fill less than ``z0`` of the
    horizon)."""
    policy = profile.policy
    top = policy.demand_max_bps / BPS
    if not policy.reserve_capacity or top <= 1.0:
        return cost, None
    planned = status.queue_hours if status.planned_hours is None else status.planned_hours
    expected = forecast.hours if forecast is not None else 0.0
    z = min(max(planned, expected) / policy.plan_horizon_h, 1.0)
    if z <= 1 / (1 + math.log(top)):
        return cost, None
    factor = (top * math.e) ** z / math.e
    least = math.ceil(cost * factor)
    return least, Rule(code="price.reserve_capacity",
                       detail=f"planned {planned:.1f} h" + (f" and {expected:.1f} h expected ({forecast.detail})" if forecast else "")
                              + f" of the next {policy.plan_horizon_h:g} h ({z:.0%} full): least ×{factor:.2f} cost "
                              f"{format_units(least)}, keeping hours for work worth more")


def _static_refusals(profile: MachineProfile, job: JobSpec, status: MachineStatus, regions: tuple[Region, ...]) -> list[Rule]:
    out = []
    if job.kind != profile.kind or job.capability not in profile.capabilities:
        out.append(Rule(code="decline.capability", detail=f"cannot {job.capability!r} as a {job.kind.value} job (a {profile.kind.value} that can {', '.join(profile.capabilities)})"))
        return out
    if profile.fab is not None:
        assert job.material is not None and job.size_mm is not None
        if job.material not in profile.fab.materials:
            out.append(Rule(code="decline.material", detail=f"material {job.material!r} not loaded (have {', '.join(profile.fab.materials)})"))
        if any(j > b for j, b in zip(sorted(job.size_mm), sorted(profile.fab.build_volume_mm), strict=True)):
            out.append(Rule(code="decline.capacity", detail=f"part {_dims(job.size_mm)} mm does not fit the {_dims(profile.fab.build_volume_mm)} mm work area"))
    if profile.vehicle is not None:
        v = profile.vehicle
        if job.payload_kg > v.payload_kg:
            out.append(Rule(code="decline.capacity", detail=f"payload {job.payload_kg:g} kg exceeds {v.payload_kg:g} kg"))
        if job.passengers > v.seats:
            out.append(Rule(code="decline.capacity", detail=f"{job.passengers} passengers exceed {v.seats} seats"))
    if status.queue_len >= profile.policy.max_queue:
        out.append(Rule(code="decline.queue", detail=f"queue full ({status.queue_len} of {profile.policy.max_queue} jobs)"))
    if job.region not in profile.territory:
        out.append(Rule(code="decline.territory", detail=f"region {job.region!r} is outside territory {', '.join(profile.territory)}"))
    elif job.pickup is not None and job.dropoff is not None:
        stray = outside((job.pickup, job.dropoff), profile.territory, regions)
        if stray is not None:
            out.append(Rule(code="decline.territory", detail=f"the route leaves territory {', '.join(profile.territory)} at "
                                                             f"({stray.x_km:.2f}, {stray.y_km:.2f}) km, whatever region it is labelled"))
    return out


def _dynamic_refusals(profile: MachineProfile, job: JobSpec, status: MachineStatus, work: WorkEstimate) -> list[Rule]:
    out = []
    finish = status.queue_hours + _charge_hours(profile, work, status) + work.total_hours
    if finish > job.deadline_h:
        out.append(Rule(code="decline.deadline", detail=f"would finish in {finish:.2f} h, deadline is {job.deadline_h:g} h"))
    wear_after = status.wear_pct + work.wear_pct(profile)
    if wear_after > profile.policy.wear_limit_pct:
        out.append(Rule(code="decline.wear", detail=f"wear would reach {wear_after:.2f}%, limit {profile.policy.wear_limit_pct:g}%: maintenance due"))
    if profile.vehicle is not None and work.total_km > profile.vehicle.range_km:
        out.append(Rule(code="decline.range", detail=f"route {work.total_km:.1f} km exceeds the {profile.vehicle.range_km:.1f} km of a full battery"))
    return out


def _charge_hours(profile: MachineProfile, work: WorkEstimate, status: MachineStatus) -> float:
    """A vehicle short of charge for the route charges first; that time counts toward the deadline."""
    if profile.vehicle is None:
        return 0.0
    return profile.vehicle.charge_hours(work.total_km, 100.0 if status.battery_pct is None else status.battery_pct)


def job_cost(profile: MachineProfile, work: WorkEstimate, market: MarketContext) -> CostBreakdown:
    """What ``work`` costs the machine: cash out (energy, consumables, travel), wear, and its share of
    fixed costs and overhead."""
    price_kwh = market.energy_price_per_kwh
    wear_per_hour = profile.purchase_price * profile.wear_pct_per_hour / 100
    energy = round(work.work_kwh * price_kwh)
    wear = round(work.work_hours * wear_per_hour)
    travel = round(work.deadhead_kwh * price_kwh + work.deadhead_hours * wear_per_hour)
    fixed = round(profile.fixed_daily_cost * work.total_hours / profile.policy.busy_hours_per_day)
    direct = energy + wear + work.consumables + travel + fixed
    overhead = direct * profile.policy.overhead_bps // BPS
    return CostBreakdown(energy=energy, wear=wear, consumables=work.consumables, travel=travel, fixed=fixed, overhead=overhead)


def _decline(rules: list[Rule], *, eta_h: float | None = None) -> Decision:
    return Decision(action="decline", eta_h=eta_h, rules=tuple(rules), reason="decline: " + "; ".join(r.detail for r in rules))


def _dims(size: tuple[float, float, float]) -> str:
    return "×".join(f"{d:g}" for d in size)
