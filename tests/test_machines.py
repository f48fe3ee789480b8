"""Machine profiles from files, job specs, and the simulated driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import SimClock
from core.errors import InvalidJobSpec, InvalidProfile, UnknownMachine, UnknownMachineKind
from machines import (
    BUNDLED_PROFILES,
    MachineKind,
    MachineState,
    Point,
    SimDriver,
    find_profile,
    load_job,
    load_profile,
    load_profiles,
    parse_kind,
)

PRUSA = (BUNDLED_PROFILES / "prusa-01.toml").read_text()


def test_bundled_profiles_cover_every_kind() -> None:
    profiles = load_profiles()
    assert {p.kind for p in profiles.values()} == set(MachineKind)
    prusa = profiles["prusa-01"]
    assert prusa.purchase_price == 1_100_000_000  # "1100.00" units
    assert prusa.fab is not None and prusa.fab.materials["PLA"].price_per_unit == 25_000
    assert profiles["taxi-01"].vehicle is not None and profiles["taxi-01"].territory == ("north", "centre")


def test_profiles_folder_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.toml").write_text(PRUSA.replace('id = "prusa-01"', 'id = "my-printer"'))
    monkeypatch.setenv("TAMC_PROFILES", str(tmp_path))
    assert list(load_profiles()) == ["my-printer"]
    with pytest.raises(UnknownMachine, match="known: my-printer"):
        find_profile("prusa-01")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: t.replace('kind = "printer_3d"', 'kind = "toaster"'), "unknown machine kind 'toaster'"),
        (lambda t: t.replace('purchase_price = "1100.00"', "purchase_price = 1100.5"), "money is never a float"),
        (lambda t: t.replace('purchase_price = "1100.00"', "purchase_price = 1100"), 'write amounts as quoted units, e.g. "1100"'),
        (lambda t: t.replace('purchase_price = "1100.00"', 'purchase_price = "eleven"'), "not a decimal number"),
        (lambda t: t[: t.index("[fab]")] + t[t.index("[policy]") :], "needs a [fab] section"),
        (lambda t: t.replace("energy_kw", "energy_kwh"), "energy_kwh: Extra inputs are not permitted"),
        (lambda t: t.replace('id = "prusa-01"', 'id = "Prusa 01"'), "id: String should match pattern"),
        (lambda t: t + "\n[broken", "is not valid TOML"),
    ],
)
def test_bad_profiles_say_what_to_fix(tmp_path: Path, edit, words: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.toml"
    path.write_text(edit(PRUSA))
    with pytest.raises(InvalidProfile) as err:
        load_profile(path)
    assert words in str(err.value)
    assert str(path) in str(err.value)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(PRUSA)
    (tmp_path / "b.toml").write_text(PRUSA)
    with pytest.raises(InvalidProfile, match="used by another profile"):
        load_profiles(tmp_path)


def test_kind_spellings() -> None:
    assert parse_kind("3D-Printer") is MachineKind.PRINTER_3D
    assert parse_kind("laser") is MachineKind.LASER_CUTTER
    with pytest.raises(UnknownMachineKind, match="known kinds: printer_3d, cnc_mill"):
        parse_kind("boat")


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "job.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ('{"id": "x",', "not valid JSON"),
        ({"id": "x", "kind": "boat", "capability": "sail", "region": "n", "deadline_h": 1}, "kind: unknown machine kind 'boat'"),
        ({"id": "x", "kind": "car", "capability": "ride", "region": "n", "deadline_h": 1}, "needs 'pickup' and 'dropoff'"),
        ({"id": "x", "kind": "printer_3d", "capability": "print", "region": "n", "deadline_h": 1, "material": "PLA", "size_mm": [1, 1, 1], "amount": 5, "max_price": 2.5}, "max_price: money is never a float"),
        ({"id": "x", "kind": "printer_3d", "capability": "print", "region": "n", "deadline_h": -1, "material": "PLA", "size_mm": [1, 1, 1], "amount": 5}, "deadline_h: Input should be greater than 0"),
        ({"id": "x", "kind": "printer_3d", "capability": "print", "region": "n", "deadline_h": 1, "material": "PLA", "size_mm": [1, 1, 1], "amount": 5, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_job_files_say_what_to_fix(tmp_path: Path, data: object, words: str) -> None:
    with pytest.raises(InvalidJobSpec) as err:
        load_job(write(tmp_path, data))
    assert words in str(err.value)


def test_job_money_reads_units_or_micros(tmp_path: Path) -> None:
    base = {"id": "x", "kind": "printer_3d", "capability": "print", "region": "n", "deadline_h": 1, "material": "PLA", "size_mm": [1, 1, 1], "amount": 5}
    assert load_job(write(tmp_path, {**base, "max_price": "2.5"})).max_price == 2_500_000
    assert load_job(write(tmp_path, {**base, "max_price": 2_500_000})).max_price == 2_500_000


def test_printer_telemetry_follows_the_clock() -> None:
    clock = SimClock()
    driver = SimDriver(load_profiles()["prusa-01"], clock)
    idle = driver.telemetry()
    assert (idle.state, idle.wear_pct, idle.energy_used_kwh) == (MachineState.IDLE, 0, 0)
    assert idle.temperatures_c == {"nozzle": 21.0, "bed": 21.0}

    driver.start_job("j1", 5.0)
    clock.advance(hours=1)
    t = driver.telemetry()
    assert t.state is MachineState.WORKING and t.job_id == "j1"
    assert t.progress == pytest.approx(0.2)
    assert t.energy_used_kwh == pytest.approx(0.12)
    assert t.wear_pct == pytest.approx(0.01)
    assert t.temperatures_c["nozzle"] > 210
    with pytest.raises(RuntimeError, match="is working"):
        driver.start_job("j2", 1.0)

    clock.advance(hours=10)  # finishes after 4 more hours, then rests 6
    t = driver.telemetry()
    assert t.state is MachineState.IDLE and t.job_id is None
    assert t.operating_hours == pytest.approx(5)
    assert t.energy_used_kwh == pytest.approx(0.6)
    assert t.wear_pct == pytest.approx(0.05)
    assert t.temperatures_c["nozzle"] == pytest.approx(21.0, abs=0.01)
    driver.maintain()
    assert driver.telemetry().wear_pct == 0


def test_vehicle_drives_its_route_and_drains_then_charges() -> None:
    clock = SimClock()
    car = SimDriver(load_profiles()["taxi-01"], clock)  # home (2,6), 30 km/h, 0.18 kWh/km, 60 kWh
    car.start_job("ride", 11 / 30, route=[Point(x_km=2, y_km=9), Point(x_km=10, y_km=9)])
    clock.advance(hours=0.2)  # 6 km: 3 to the pickup, 3 toward the dropoff
    t = car.telemetry()
    assert t.position == Point(x_km=5, y_km=9)
    assert t.battery_pct == pytest.approx(100 - 6 * 0.18 / 60 * 100)
    clock.advance(hours=0.5)
    t = car.telemetry()
    assert t.position == Point(x_km=10, y_km=9) and t.state is MachineState.IDLE
    assert t.energy_used_kwh > 11 * 0.18  # driving plus recharging
    clock.advance(hours=2)
    assert car.telemetry().battery_pct == 100


def test_wear_grows_only_with_work() -> None:
    clock = SimClock()
    mill = SimDriver(load_profiles()["shapeoko-01"], clock, wear_pct=10)
    clock.advance(hours=100)
    assert mill.telemetry().wear_pct == 10
    mill.start_job("j", 2)
    clock.advance(hours=3)
    assert mill.telemetry().wear_pct == pytest.approx(10.1)
