"""Drivers run a machine and report its telemetry. The simulated one follows a clock.

``SimDriver`` integrates the machine's state each time it is read: energy and wear grow with
operating hours, temperatures approach their working or ambient values, a vehicle moves along its
route and drains its battery, and charges when idle at home. Nothing happens between reads, so a
simulated week costs as much as reading it once.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from core.clock import Clock
from machines.kinds import MachineKind
from machines.profile import MachineProfile, Point

__all__ = ["Driver", "MachineState", "SimDriver", "Telemetry"]

AMBIENT_C = 21.0
THERMAL_TAU_H = 0.05
"""Time constant of heating and cooling: three minutes."""
CHARGE_KW = 7.0

WORKING_TEMPS: dict[MachineKind, dict[str, float]] = {
    MachineKind.PRINTER_3D: {"nozzle": 215.0, "bed": 60.0},
    MachineKind.CNC_MILL: {"spindle": 48.0},
    MachineKind.LASER_CUTTER: {"tube": 32.0},
    MachineKind.CAR: {"battery": 34.0},
    MachineKind.DRONE: {"motors": 55.0},
}


class MachineState(StrEnum):
    IDLE = "idle"
    WORKING = "working"
    MAINTENANCE = "maintenance"
    OFFLINE = "offline"


class Telemetry(BaseModel):
    model_config = ConfigDict(frozen=True)

    machine_id: str
    at: datetime
    state: MachineState
    job_id: str | None = None
    progress: float = 0.0
    """Share of the current job done, 0 to 1."""
    wear_pct: float
    temperatures_c: dict[str, float]
    energy_used_kwh: float
    operating_hours: float
    battery_pct: float | None = None
    position: Point | None = None


class Driver(Protocol):
    """What a machine node needs from the thing it drives, simulated or real."""

    def telemetry(self) -> Telemetry: ...
    def start_job(self, job_id: str, hours: float, *, route: list[Point] | None = None) -> None: ...


class SimDriver:
    def __init__(
        self,
        profile: MachineProfile,
        clock: Clock,
        *,
        wear_pct: float = 0.0,
        battery_pct: float = 100.0,
    ) -> None:
        self.profile = profile
        self.clock = clock
        self._at = clock.now()
        self._state = MachineState.IDLE
        self._wear = wear_pct
        self._energy = 0.0
        self._hours = 0.0
        self._temps = {name: AMBIENT_C for name in WORKING_TEMPS[profile.kind]}
        self._job: str | None = None
        self._job_hours = 0.0
        self._done_hours = 0.0
        self._route: list[Point] = []
        vehicle = profile.vehicle
        self._battery = battery_pct if vehicle else None
        self._position = vehicle.home if vehicle else None

    def start_job(self, job_id: str, hours: float, *, route: list[Point] | None = None) -> None:
        """Begin ``hours`` of work; a vehicle drives ``route`` (pickup, dropoff) over that time."""
        self._advance()
        if self._state is not MachineState.IDLE:
            raise RuntimeError(f"{self.profile.id} is {self._state.value}, cannot start {job_id}")
        if hours <= 0:
            raise ValueError("a job takes a positive number of hours")
        self._state, self._job, self._job_hours, self._done_hours = MachineState.WORKING, job_id, hours, 0.0
        self._route = list(route or [])

    def finish_job(self) -> None:
        """Book the rest of the current job now: the node's timer, not the clock's rounding, says
        when a job is done."""
        self._advance()
        if self._state is MachineState.WORKING:
            self._work(self._job_hours - self._done_hours)
            self._state, self._job, self._route = MachineState.IDLE, None, []

    def abort_job(self) -> None:
        """Stop the current job where it is (failure or cancellation)."""
        self._advance()
        if self._state is MachineState.WORKING:
            self._state, self._job, self._route = MachineState.IDLE, None, []

    def maintain(self) -> None:
        """Service the machine: wear back to zero."""
        self._advance()
        if self._state is MachineState.WORKING:
            raise RuntimeError(f"{self.profile.id} is working; maintain it when idle")
        self._wear = 0.0

    def telemetry(self) -> Telemetry:
        self._advance()
        return Telemetry(
            machine_id=self.profile.id,
            at=self._at,
            state=self._state,
            job_id=self._job,
            progress=self._done_hours / self._job_hours if self._job else 0.0,
            wear_pct=round(self._wear, 6),
            temperatures_c={k: round(v, 2) for k, v in self._temps.items()},
            energy_used_kwh=round(self._energy, 6),
            operating_hours=round(self._hours, 6),
            battery_pct=None if self._battery is None else round(self._battery, 4),
            position=self._position,
        )

    def _advance(self) -> None:
        now = self.clock.now()
        dt = (now - self._at).total_seconds() / 3600
        self._at = now
        while dt > 1e-12:
            if self._state is MachineState.WORKING:
                step = min(dt, self._job_hours - self._done_hours)
                self._work(step)
                if self._done_hours >= self._job_hours - 1e-12:
                    self._state, self._job, self._route = MachineState.IDLE, None, []
            else:
                step = dt
                self._rest(step)
            dt -= step

    def _work(self, hours: float) -> None:
        p = self.profile
        self._done_hours += hours
        self._hours += hours
        self._wear = min(100.0, self._wear + p.wear_pct_per_hour * hours)
        self._heat(hours, working=True)
        if p.vehicle is None:
            self._energy += p.energy_kw * hours
            return
        km = p.vehicle.speed_kmh * hours
        self._energy += km * p.vehicle.energy_kwh_per_km
        assert self._battery is not None and self._position is not None
        self._battery = max(0.0, self._battery - 100 * km * p.vehicle.energy_kwh_per_km / p.vehicle.battery_kwh)
        while km > 1e-12 and self._route:
            leg = self._position.distance_to(self._route[0])
            self._position = self._position.toward(self._route[0], km)
            km -= min(km, leg)
            if self._position == self._route[0]:
                self._route.pop(0)

    def _rest(self, hours: float) -> None:
        self._heat(hours, working=False)
        v = self.profile.vehicle
        if v is not None and self._battery is not None and self._battery < 100.0:
            kwh = min(v.charge_kw * hours, (100.0 - self._battery) * v.battery_kwh / 100)
            self._battery += 100 * kwh / v.battery_kwh
            self._energy += kwh

    def _heat(self, hours: float, *, working: bool) -> None:
        k = 1 - math.exp(-hours / THERMAL_TAU_H)
        targets = WORKING_TEMPS[self.profile.kind]
        for name, temp in self._temps.items():
            target = targets[name] if working else AMBIENT_C
            self._temps[name] = temp + (target - temp) * k
