"""A machine's profile: what it can do, what it costs to run, and the policy its owners set.

Profiles are data, loaded from TOML files a user can edit (see ``machines/profiles/``). Money in
them is written as quoted units (``purchase_price = "1100.00"``) and held as micro-units.
"""

from __future__ import annotations

import math
from typing import Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from core.errors import UnknownMachineKind
from core.money import Micros, Money
from machines.kinds import MachineKind, parse_kind

__all__ = ["FabSpec", "Kind", "MachineProfile", "Material", "Point", "Policy", "VehicleSpec"]


def _kind(value: object) -> object:
    if isinstance(value, str):
        try:
            return parse_kind(value)
        except UnknownMachineKind as exc:
            raise ValueError(str(exc)) from None
    return value


Kind = Annotated[MachineKind, BeforeValidator(_kind)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Model):
    """A place in the city grid, in kilometres from its origin."""

    x_km: float
    y_km: float

    def distance_to(self, other: Point) -> float:
        return math.hypot(other.x_km - self.x_km, other.y_km - self.y_km)

    def toward(self, other: Point, km: float) -> Point:
        """The point ``km`` along the straight line to ``other`` (``other`` itself if closer)."""
        d = self.distance_to(other)
        if d <= km or d == 0:
            return other
        f = km / d
        return Point(x_km=self.x_km + (other.x_km - self.x_km) * f, y_km=self.y_km + (other.y_km - self.y_km) * f)


class Material(_Model):
    """A material a fab machine works, in its own work unit (g printed, cm³ milled, m cut)."""

    rate_per_hour: float = Field(gt=0)
    """Work units per operating hour."""
    price_per_unit: Money = 0
    """Consumables per work unit: filament per gram, tooling per cm³, gas and optics per metre."""


class FabSpec(_Model):
    build_volume_mm: tuple[float, float, float]
    unit: str
    """The work unit of ``amount`` in a job: 'g', 'cm3' or 'm'."""
    materials: dict[str, Material]


class VehicleSpec(_Model):
    speed_kmh: float = Field(gt=0)
    energy_kwh_per_km: float = Field(gt=0)
    battery_kwh: float = Field(gt=0)
    payload_kg: float = Field(ge=0)
    seats: int = Field(default=0, ge=0)
    home: Point
    charge_kw: float = Field(default=7.0, gt=0)
    """Charging power while parked between jobs."""

    @property
    def range_km(self) -> float:
        return self.battery_kwh / self.energy_kwh_per_km

    def charge_hours(self, km: float, battery_pct: float) -> float:
        """Hours of charging before a ``km`` trip can start from ``battery_pct`` (0 if it has enough)."""
        short_kwh = km * self.energy_kwh_per_km - self.battery_kwh * max(battery_pct, 0.0) / 100
        return max(short_kwh, 0.0) / self.charge_kw


class Policy(_Model):
    """What the owners decided: margins, limits and territory. Governance changes it by vote."""

    margin_bps: int = Field(default=2000, ge=0, le=100_000)
    """Margin over cost in basis points (2000 = 20%)."""
    overhead_bps: int = Field(default=500, ge=0, le=10_000)
    """Insurance, platform and admin as a share of direct cost."""
    price_floor: Money = 0
    """No job is done for less than this."""
    price_ceiling: Money | None = None
    """No bid is above this (a community price cap); a job costing more is declined."""
    wear_limit_pct: float = Field(default=80.0, gt=0, le=100)
    """Wear above which the machine takes no work until maintained."""
    territory: tuple[str, ...] = ()
    """Regions it serves; empty means its home region only."""
    max_queue: int = Field(default=8, ge=0)
    """Most jobs accepted and not finished; the node also refuses a job that would make one late."""
    busy_hours_per_day: float = Field(default=8.0, gt=0, le=24)
    """Expected working hours a day, over which fixed daily costs are spread."""
    demand_sensitivity_bps: int = Field(default=5000, ge=0, le=10_000)
    """How much of the market's demand index passes into the price (5000 = half)."""
    backlog_bps_per_job: int = Field(default=500, ge=0, le=10_000)
    """Price premium per job already queued: busy machines get dearer, spreading the load."""
    demand_min_bps: int = Field(default=8000, gt=0)
    demand_max_bps: int = Field(default=20000, gt=0)
    """Bounds of the demand factor, whether it comes from the market index or from memory."""
    plan_horizon_h: float = Field(default=8.0, gt=0)
    """The hours ahead the least acceptable price looks at: as planned work fills them, the least
    price rises from cost towards ``demand_max_bps`` × cost, so cheap work does not crowd out
    valuable work later (the online knapsack threshold)."""
    standby_premium_bps: int | None = Field(default=2500, ge=0, le=100_000)
    """A parked machine still answers calls in its territory, at this premium over its price, and
    out of the requesters' count of who may answer (they do not wait for it): it wins only work the
    active machines leave. None: a parked machine hears no calls."""
    reserve_capacity: bool = True
    """Raise the least acceptable price with the share of the horizon already planned (False: any
    price over cost is acceptable however full the machine is)."""
    learn_from_memory: bool = True
    """Price from the outcomes of similar past jobs when memory holds enough of them."""
    memory_min_samples: int = Field(default=3, ge=1)
    """Similar past jobs (won or lost) needed before memory moves the price."""
    memory_undercut_bps: int = Field(default=300, ge=0, le=5000)
    """After losing most similar jobs: bid this far under the winners' median ratio to our cost."""
    memory_raise_bps: int = Field(default=500, ge=0, le=5000)
    """After winning most similar jobs: bid this far over our winning median ratio to cost."""
    concession_bps: int = Field(default=1000, ge=0, le=10_000)
    """In a negotiation, the most the machine comes down from its rule price for a stranger (never
    below its least price: cost, the capacity it keeps, the floor)."""
    stakeholder_concession_bps: int = Field(default=2500, ge=0, le=10_000)
    """The same for one of its own holders haggling in chat."""
    slack_bps_per_h: int = Field(default=200, ge=0, le=10_000)
    """Further concession per hour of deadline beyond the call's: slack lets it fit the job into a quiet hour."""
    concession_beta: float = Field(default=0.6, gt=0, le=10)
    """How it concedes across the rounds: below 1 it holds out and concedes late, above 1 early."""
    price_tick: Micros = Field(default=10_000, gt=0)
    """Bids are rounded up to a multiple of this (0.01 unit)."""
    expense_limit: Money = 50_000_000
    """The most the machine's agent may pay for one expense on its own; above it, holders approve."""
    expense_daily_limit: Money = 200_000_000
    """The most it may pay in expenses on its own in any 24 hours, so small payments cannot add up."""
    payees: tuple[str, ...] = ("utility:energy", "supplier:materials", "supplier:maintenance")
    """Ledger accounts the agent may pay expenses to; anyone else needs a vote."""


class MachineProfile(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str
    kind: Kind
    region: str
    capabilities: tuple[str, ...] = Field(min_length=1)
    energy_kw: float = Field(ge=0)
    """Power drawn while working (fab machines); vehicles use ``vehicle.energy_kwh_per_km``."""
    wear_pct_per_hour: float = Field(gt=0)
    """Wear per operating hour, in percent of the machine's life."""
    purchase_price: Money
    fixed_daily_cost: Money
    """Rent, insurance, financing: paid every day, working or not."""
    fab: FabSpec | None = None
    vehicle: VehicleSpec | None = None
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _section_matches_kind(self) -> Self:
        if self.kind.is_vehicle and (self.vehicle is None or self.fab is not None):
            raise ValueError(f"a {self.kind.value} profile needs a [vehicle] section and no [fab] section")
        if not self.kind.is_vehicle and (self.fab is None or self.vehicle is not None):
            raise ValueError(f"a {self.kind.value} profile needs a [fab] section and no [vehicle] section")
        return self

    @property
    def territory(self) -> tuple[str, ...]:
        return self.policy.territory or (self.region,)
