"""Faults planned on purpose: a driver that wraps a simulator and makes jobs go wrong on cue.

Like httpx's ``MockTransport`` wraps a handler behind the transport interface, ``FaultyDriver``
wraps a ``SimDriver`` behind the driver protocol, so the node and its job runner know nothing of
simulation: a takeover test plans ``fail`` at half of a job, a handoff test a ``thermal_runaway``
at a quarter. A fault fires once, at the first reading of the machine (any call that reads it)
that finds the job running at or past its share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, cast, get_args

from machines.driver import JobRun, SimDriver, Telemetry
from machines.profile import Point

__all__ = ["Fault", "FaultyDriver"]

Fault = Literal["fail", "thermal_runaway", "wear_spike", "battery_drain", "incident"]
"""``fail``: the job fails on the machine (its runner-up takes over); the others are what
``SimDriver.inject`` simulates (a runaway heater, a wear spike, a drained battery, a road incident)."""


class FaultyDriver:
    """A ``SimDriver`` whose jobs fail or misbehave as planned: job id -> (share of the job, fault)."""

    paced_by_clock = True

    def __init__(self, inner: SimDriver, faults: Mapping[str, tuple[float, str]] | None = None) -> None:
        self.inner = inner
        self.faults: dict[str, tuple[float, Fault]] = {}
        self.fired: list[str] = []
        """Jobs whose fault has fired, in order."""
        for job_id, (share, fault) in (faults or {}).items():
            self.plan(job_id, share, fault)

    def plan(self, job_id: str, share: float, fault: str) -> None:
        """Make ``fault`` happen when ``job_id`` reaches ``share`` (0 to 1) of its work."""
        if fault not in get_args(Fault):
            raise ValueError(f"unknown fault {fault!r}: {', '.join(get_args(Fault))}")
        if not 0 <= share <= 1:
            raise ValueError(f"a fault's share of the job is between 0 and 1, not {share}")
        self.faults[job_id] = (share, cast(Fault, fault))

    def _due(self) -> None:
        if not self.faults:
            return
        t = self.inner.telemetry()
        planned = self.faults.get(t.job_id) if t.job_id is not None else None
        if planned is None or t.job_id in self.fired or self.inner.job_run(t.job_id or "") != "running":
            return
        share, fault = planned
        if t.progress >= share:
            assert t.job_id is not None
            self.fired.append(t.job_id)
            if fault == "fail":
                self.inner.fault()
            else:
                self.inner.inject(fault)

    # -- the driver protocol: each reading first fires what is due -----------------------------------

    def telemetry(self) -> Telemetry:
        self._due()
        return self.inner.telemetry()

    def job_run(self, job_id: str) -> JobRun:
        self._due()
        return self.inner.job_run(job_id)

    def start_job(self, job_id: str, hours: float, *, route: list[Point] | None = None) -> None:
        self.inner.start_job(job_id, hours, route=route)

    def finish_job(self) -> None:
        self._due()  # a job planned to fail at its very end fails rather than finishes
        self.inner.finish_job()

    def set_pace(self, seconds_per_hour: float) -> None:
        self.inner.set_pace(seconds_per_hour)

    def recover(self, job_id: str, hours: float, progress: float, *, paused: bool, route: list[Point] | None = None) -> None:
        self.inner.recover(job_id, hours, progress, paused=paused, route=route)

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    def cancel(self) -> None:
        self.inner.cancel()

    def set(self, name: str, value: float) -> None:
        self.inner.set(name, value)

    def move_to(self, point: Point) -> None:
        self.inner.move_to(point)

    def maintain(self) -> None:
        self.inner.maintain()
