"""The fault-planning driver without a broker: a planned fault fires once, when its job reaches its
share, through the driver protocol alone; a job without a plan runs as on the plain simulator."""

from __future__ import annotations

import pytest

from core.clock import SimClock
from machines.driver import SAFE_LIMITS_C, Driver, SimDriver
from machines.faults import FaultyDriver
from machines.loader import find_profile

PRINTER = find_profile("prusa-01")
TAXI = find_profile("taxi-01")


def test_a_planned_failure_fires_at_its_share_and_not_before() -> None:
    clock = SimClock()
    driver = FaultyDriver(SimDriver(PRINTER, clock), {"j-fail": (0.5, "fail")})
    driver.start_job("j-fail", 2.0)
    clock.advance(hours=0.9)  # 45 % of the job
    assert driver.job_run("j-fail") == "running" and driver.fired == []
    clock.advance(hours=0.2)  # 55 %
    assert driver.job_run("j-fail") == "failed"
    assert driver.fired == ["j-fail"]
    assert driver.telemetry().job_id is None  # the machine is free for the next job


def test_a_fault_fires_once_and_only_for_its_job() -> None:
    clock = SimClock()
    driver = FaultyDriver(SimDriver(PRINTER, clock), {"j-hot": (0.25, "thermal_runaway")})
    driver.start_job("j-cool", 1.0)
    clock.advance(hours=0.5)
    assert max(driver.telemetry().temperatures_c.values()) < SAFE_LIMITS_C["nozzle"]  # another job: nothing happens
    driver.finish_job()
    driver.start_job("j-hot", 1.0)
    clock.advance(hours=0.3)
    assert driver.telemetry().temperatures_c["nozzle"] > SAFE_LIMITS_C["nozzle"]
    driver.set("nozzle", 215.0)  # an operator sets the heater back...
    clock.advance(hours=0.3)
    assert driver.telemetry().temperatures_c["nozzle"] < SAFE_LIMITS_C["nozzle"]  # ...and it does not run away again
    assert driver.fired == ["j-hot"]


def test_a_paused_job_does_not_fire_its_fault() -> None:
    clock = SimClock()
    driver = FaultyDriver(SimDriver(TAXI, clock), {"ride": (0.0, "incident")})
    driver.start_job("ride", 1.0)
    driver.pause()
    assert driver.telemetry().incident is None and driver.fired == []
    driver.resume()
    assert driver.telemetry().incident is not None


def test_without_a_plan_it_reads_as_the_plain_simulator() -> None:
    clock_a, clock_b = SimClock(), SimClock()
    plain, wrapped = SimDriver(PRINTER, clock_a, wear_pct=10.0), FaultyDriver(SimDriver(PRINTER, clock_b, wear_pct=10.0))
    drivers: list[Driver] = [plain, wrapped]
    for d in drivers:
        d.start_job("j", 3.0)
    for _ in range(5):
        clock_a.advance(seconds=1800)
        clock_b.advance(seconds=1800)
        assert plain.telemetry().model_copy(update={"at": None}) == wrapped.telemetry().model_copy(update={"at": None})
    assert wrapped.paced_by_clock and plain.paced_by_clock


@pytest.mark.parametrize(("share", "fault"), [(1.5, "fail"), (0.5, "melt")])
def test_a_bad_plan_is_refused(share: float, fault: str) -> None:
    driver = FaultyDriver(SimDriver(PRINTER, SimClock()))
    with pytest.raises(ValueError, match="fault"):
        driver.plan("j", share, fault)
