"""When a machine asks a person: each check, on the simulated machine's own telemetry."""

from __future__ import annotations

from agents.handoff import before_start, during_job
from core.clock import ScaledClock
from ledger import Charter
from machines import JobSpec, load_profiles
from machines.driver import SimDriver
from machines.profile import Point
from machines.work import estimate

PROFILES = load_profiles()
PRINT = JobSpec(id="p", kind="printer_3d", capability="print", region="north", deadline_h=8, material="PLA",
                size_mm=(80, 60, 40), amount=40)
RIDE = JobSpec(id="r", kind="car", capability="ride", region="north", deadline_h=8,
               pickup=Point(x_km=2, y_km=9), dropoff=Point(x_km=10, y_km=9))


def test_before_a_job_starts_the_charter_the_envelope_and_the_models_doubt_call_a_person() -> None:
    prusa = PROFILES["prusa-01"]
    hours = estimate(prusa, PRINT).total_hours
    assert before_start(prusa, PRINT, price=5_000_000, hours=hours, charter=Charter()) is None
    assert before_start(prusa, PRINT, price=5_000_000, hours=hours, charter=Charter(review_capabilities=("print",))).reason == "charter"
    dear = before_start(prusa, PRINT, price=5_000_000, hours=hours, charter=Charter(review_above=4_000_000))
    assert dear is not None and dear.reason == "charter" and "4000000" in dear.detail
    assert before_start(prusa, PRINT, price=5_000_000, hours=30, charter=Charter()).reason == "envelope"  # type: ignore[union-attr]
    big = PRINT.model_copy(update={"size_mm": (240.0, 60.0, 40.0)})  # 96 % of the 250 mm bed
    assert before_start(prusa, big, price=5_000_000, hours=hours, charter=Charter()).reason == "envelope"  # type: ignore[union-attr]
    unsure = before_start(prusa, PRINT, price=5_000_000, hours=hours, charter=Charter(), confidence=0.3)
    assert unsure is not None and unsure.reason == "low-confidence" and unsure.proposal
    assert before_start(prusa, PRINT, price=5_000_000, hours=hours, charter=Charter(), confidence=0.9) is None


def test_during_a_job_a_runaway_a_wear_spike_a_flat_battery_and_an_incident_call_a_person() -> None:
    clock = ScaledClock(3600)
    prusa = SimDriver(PROFILES["prusa-01"], clock)
    prusa.start_job("p", 2.0)
    calm = prusa.telemetry()
    assert during_job(PROFILES["prusa-01"], calm, wear_at_start=0.0, expected_wear=0.02) is None
    prusa.inject("thermal_runaway")
    hot = during_job(PROFILES["prusa-01"], prusa.telemetry(), wear_at_start=0.0, expected_wear=0.02)
    assert hot is not None and hot.reason == "anomaly.temperature" and "nozzle" in hot.detail and "215" in hot.proposal
    worn = SimDriver(PROFILES["prusa-01"], clock)
    worn.start_job("p", 2.0)
    worn.inject("wear_spike")
    spike = during_job(PROFILES["prusa-01"], worn.telemetry(), wear_at_start=0.0, expected_wear=0.02)
    assert spike is not None and spike.reason == "anomaly.wear"

    taxi = PROFILES["taxi-01"]
    car = SimDriver(taxi, clock)
    car.start_job("r", 1.0, route=[RIDE.pickup, RIDE.dropoff])  # type: ignore[list-item]
    assert during_job(taxi, car.telemetry(), wear_at_start=0.0, expected_wear=1.0, km_left=10) is None
    car.inject("battery_drain")
    flat = during_job(taxi, car.telemetry(), wear_at_start=0.0, expected_wear=1.0, km_left=40)  # 3 % left will not do 40 km
    assert flat is not None and flat.reason == "anomaly.battery" and flat.context["km_left"] == 40
    crash = SimDriver(taxi, clock)
    crash.start_job("r", 1.0, route=[RIDE.pickup, RIDE.dropoff])  # type: ignore[list-item]
    crash.inject("incident")
    hurt = during_job(taxi, crash.telemetry(), wear_at_start=0.0, expected_wear=1.0, km_left=1)
    assert hurt is not None and hurt.reason == "anomaly.incident"
    crash.pause()
    crash.resume()  # the operator cleared it
    assert during_job(taxi, crash.telemetry(), wear_at_start=0.0, expected_wear=1.0, km_left=1) is None
