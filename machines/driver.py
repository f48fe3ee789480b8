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
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from core.clock import Clock
from core.errors import CommandRejected
from machines.kinds import MachineKind
from machines.profile import MachineProfile, Point

__all__ = ["SAFE_LIMITS_C", "Driver", "JobRun", "MachineState", "SimDriver", "Telemetry"]

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


SAFE_LIMITS_C: dict[str, float] = {"nozzle": 270.0, "bed": 110.0, "spindle": 75.0, "tube": 45.0, "battery": 55.0, "motors": 80.0}
"""Temperatures above which a machine is running away: the node hands the job to a person."""

JobRun = Literal["running", "paused", "done", "cancelled", "failed", "unknown"]
"""Where a job stands on the machine itself, as its driver reads it."""


class MachineState(StrEnum):
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
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
    incident: str | None = None
    """A vehicle's report of something that happened on the road (a collision, a blocked route)."""


class Driver(Protocol):
    """What a machine node needs from the thing it drives, simulated or real.

    Control methods raise ``CommandRejected`` when the machine cannot do that now (pause while idle)
    or at all (a printer told to move), and a real driver raises ``DriverError`` when its machine's
    server fails. ``start_job`` for a job already running is a no-op: a resumed workflow repeats it.
    """

    @property
    def paced_by_clock(self) -> bool:
        """True when the machine's state is a function of the node's clock (a simulator): the runner
        reads it at each progress step and at the job's end. False when it works at its own pace
        (a real machine): the runner reads it every tick."""
    def set_pace(self, seconds_per_hour: float) -> None:
        """A market hour lasts this many real seconds: a real machine works a job's market hours in
        them; a simulator follows its clock and ignores it."""
    def recover(self, job_id: str, hours: float, progress: float, *, paused: bool, route: list[Point] | None = None) -> None:
        """A restarted node's workflow says ``job_id`` is on the machine, this far along: a simulator
        puts it back; a real machine kept its own state and ignores it."""
    def telemetry(self) -> Telemetry: ...
    def start_job(self, job_id: str, hours: float, *, route: list[Point] | None = None) -> None: ...
    def job_run(self, job_id: str) -> JobRun: ...
    def finish_job(self) -> None:
        """The node's timer says the job is done (a simulator books the rest; a real machine knows)."""
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def cancel(self) -> None: ...
    def set(self, name: str, value: float) -> None:
        """Set a parameter: a heater's target (``nozzle``, ``bed``) in °C."""
    def move_to(self, point: Point) -> None: ...
    def maintain(self) -> None: ...


class SimDriver:
    paced_by_clock = True

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
        self._runs: dict[str, JobRun] = {}
        """How each job that left the machine ended: done or cancelled."""
        self._targets: dict[str, float] = {}
        """Working temperatures set by an operator (or a runaway heater) instead of the kind's own."""
        self._incident: str | None = None
        vehicle = profile.vehicle
        self._battery = battery_pct if vehicle else None
        self._position = vehicle.home if vehicle else None

    def start_job(self, job_id: str, hours: float, *, route: list[Point] | None = None) -> None:
        """Begin ``hours`` of work; a vehicle drives ``route`` (pickup, dropoff) over that time."""
        self._advance()
        if self._job == job_id:
            return  # already under way: a resumed workflow repeats the call
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
        if self._state in (MachineState.WORKING, MachineState.PAUSED) and self._job is not None:
            self._work(self._job_hours - self._done_hours)
            self._end("done")

    def abort_job(self) -> None:
        """Stop the current job where it is (failure or cancellation)."""
        self._advance()
        if self._job is not None:
            self._end("cancelled")

    def fault(self) -> None:
        """Simulation aid: the job fails on the machine now."""
        self._advance()
        if self._job is not None:
            self._end("failed")

    def _end(self, how: JobRun) -> None:
        assert self._job is not None
        self._runs[self._job] = how
        self._state, self._job, self._route, self._incident = MachineState.IDLE, None, [], None
        self._targets = {k: v for k, v in self._targets.items() if v <= SAFE_LIMITS_C.get(k, v)}  # a runaway ends with its job

    def job_run(self, job_id: str) -> JobRun:
        self._advance()
        if self._job == job_id:
            return "paused" if self._state is MachineState.PAUSED else "running"
        return self._runs.get(job_id, "unknown")

    # -- remote control (operators) ----------------------------------------------------------------

    def pause(self) -> None:
        """Safe state: work stops, heaters and motors rest, a vehicle pulls over where it is."""
        self._advance()
        if self._state is not MachineState.WORKING:
            raise CommandRejected(f"{self.profile.id} is {self._state.value}: only a working machine can be paused")
        self._state = MachineState.PAUSED

    def resume(self) -> None:
        self._advance()
        if self._state is not MachineState.PAUSED:
            raise CommandRejected(f"{self.profile.id} is {self._state.value}: only a paused machine can be resumed")
        self._state, self._incident = MachineState.WORKING, None

    def cancel(self) -> None:
        self._advance()
        if self._job is None:
            raise CommandRejected(f"{self.profile.id} has no job to cancel")
        self._end("cancelled")

    def set(self, name: str, value: float) -> None:
        """Set the working temperature of one of the machine's heaters or cooled parts."""
        self._advance()
        if name not in self._temps:
            raise CommandRejected(f"{self.profile.id} has no parameter {name!r}; it has {', '.join(sorted(self._temps))}")
        limit = SAFE_LIMITS_C.get(name, 300.0)
        if not 0 <= value <= limit:
            raise CommandRejected(f"{name} must be set between 0 and {limit:g} °C, not {value:g}")
        self._targets[name] = value

    def move_to(self, point: Point) -> None:
        """Drive (a vehicle, idle or paused) to ``point``; the simulator books the trip at once."""
        self._advance()
        vehicle = self.profile.vehicle
        if vehicle is None or self._position is None or self._battery is None:
            raise CommandRejected(f"{self.profile.id} is a {self.profile.kind.value}: it does not travel")
        if self._state is MachineState.WORKING:
            raise CommandRejected(f"{self.profile.id} is driving a job; pause it first")
        km = self._position.distance_to(point)
        need = 100 * km * vehicle.energy_kwh_per_km / vehicle.battery_kwh
        if need > self._battery:
            raise CommandRejected(f"{km:.1f} km needs {need:.0f}% of the battery; {self._battery:.0f}% is left")
        self._battery -= need
        self._energy += km * vehicle.energy_kwh_per_km
        self._position = point

    # -- simulation aids: faults injected on purpose, and a restart's recovery -------------------

    def inject(self, fault: str) -> None:
        """Make something go wrong now: ``thermal_runaway`` (the first heater heads past its safe limit),
        ``wear_spike`` (+15 % wear), ``battery_drain`` (down to 3 %), ``incident`` (a vehicle reports one)."""
        self._advance()
        first = next(iter(self._temps))
        if fault == "thermal_runaway":
            self._targets[first] = SAFE_LIMITS_C.get(first, 100.0) + 40
            self._temps[first] = SAFE_LIMITS_C.get(first, 100.0) + 5
        elif fault == "wear_spike":
            self._wear = min(100.0, self._wear + 15.0)
        elif fault == "battery_drain" and self._battery is not None:
            self._battery = min(self._battery, 3.0)
        elif fault == "incident":
            self._incident = "collision reported by the vehicle's sensors"
        else:
            raise ValueError(f"unknown fault {fault!r}: thermal_runaway, wear_spike, battery_drain or incident")

    def recover(self, job_id: str, hours: float, progress: float, *, paused: bool, route: list[Point] | None = None) -> None:
        """Put a job back on a restarted simulator where the workflow last saw it (a real machine
        keeps its own state across its node's restart)."""
        self._advance()
        if self._job == job_id:
            return
        self._state = MachineState.PAUSED if paused else MachineState.WORKING
        self._job, self._job_hours, self._done_hours = job_id, hours, hours * min(max(progress, 0.0), 1.0)
        self._route = list(route or [])

    def set_pace(self, seconds_per_hour: float) -> None:
        """A simulator follows its clock: the market's pace is already in it."""

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
            progress=min(self._done_hours / self._job_hours, 1.0) if self._job else 0.0,
            wear_pct=round(self._wear, 6),
            temperatures_c={k: round(v, 2) for k, v in self._temps.items()},
            energy_used_kwh=round(self._energy, 6),
            operating_hours=round(self._hours, 6),
            battery_pct=None if self._battery is None else round(self._battery, 4),
            position=self._position,
            incident=self._incident,
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
                    self._end("done")
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
        if v is not None and self._state is MachineState.IDLE and self._battery is not None and self._battery < 100.0:
            kwh = min(v.charge_kw * hours, (100.0 - self._battery) * v.battery_kwh / 100)
            self._battery += 100 * kwh / v.battery_kwh
            self._energy += kwh

    def _heat(self, hours: float, *, working: bool) -> None:
        k = 1 - math.exp(-hours / THERMAL_TAU_H)
        targets = {**WORKING_TEMPS[self.profile.kind], **self._targets}
        for name, temp in self._temps.items():
            target = targets[name] if working else AMBIENT_C
            self._temps[name] = temp + (target - temp) * k
