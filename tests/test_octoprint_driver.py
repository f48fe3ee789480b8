"""The OctoPrint driver against a real OctoPrint and its virtual printer (one server for the file).

A market hour lasts ``SPH`` real seconds here, so a one-hour job prints in about four seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from octoprint_server import OctoPrintServer
from octoprint_server import octoprint as octoprint  # the session fixture, shared with this module

from core.errors import CommandRejected, DriverError
from core.net import free_port
from machines import MachineState, Point, load_profiles
from machines.gcode import print_program
from machines.octoprint import OctoPrintDriver, file_name

PROFILE = load_profiles()["prusa-01"]
SPH = 4.0
"""Real seconds per market hour."""


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 15.0, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


# -- without a server ----------------------------------------------------------------------------

def test_a_program_dwells_for_its_time_and_never_waits_for_heat() -> None:
    program = print_program("job-9", 60.0)
    lines = program.splitlines()
    assert lines[0].startswith("; TAMC job job-9")
    dwell_s = sum(int(x[4:]) for x in lines if x.startswith("G4 S")) + sum(int(x[4:]) / 1000 for x in lines if x.startswith("G4 P"))
    moves = [x for x in lines if x.startswith("G1 X")]
    assert 0.7 * 60 < dwell_s < 60 and len(moves) >= 8
    assert {"M104 S215 ; nozzle target, not waited for", "M140 S60 ; bed target, not waited for", "G28 ; home"} < set(lines)
    assert not any(x.startswith(("M109", "M190")) for x in lines)
    assert lines[-3:] == ["M104 S0 ; nozzle off", "M140 S0 ; bed off", "M84 ; motors off"]
    assert max(int(x[4:]) for x in lines if x.startswith("G4 S")) == 1, "long dwells delay a pause"
    assert print_program("x\nG28", 1).count("\n") == print_program("x", 1).count("\n")


def test_file_names_keep_safe_ids_and_never_collide() -> None:
    assert file_name("job-1_a") == "tamc-job-1_a.gcode"
    odd = {file_name(i) for i in ("a b/c", "a_b/c", "a b c", "ä")}
    assert len(odd) == 4 and all(re.fullmatch(r"tamc-[A-Za-z0-9_-]+\.gcode", n) for n in odd)


# -- on OctoPrint ----------------------------------------------------------------------------------

@pytest.fixture
def api(octoprint: OctoPrintServer) -> Iterator[httpx.Client]:
    """OctoPrint's REST API, to check what the driver did from the server's side."""
    with httpx.Client(base_url=octoprint.url, headers={"X-Api-Key": octoprint.api_key}, timeout=5) as client:
        yield client


def new_driver(server: OctoPrintServer, **options: Any) -> OctoPrintDriver:
    return OctoPrintDriver(PROFILE, server.url, server.api_key, seconds_per_hour=SPH, **options)


@pytest.fixture
def driver(octoprint: OctoPrintServer) -> Iterator[OctoPrintDriver]:
    """A fresh driver on a connected, idle printer; whatever it leaves printing is cancelled."""
    d = new_driver(octoprint)
    d.connect()
    assert d.telemetry().state is MachineState.IDLE, "the previous test left the printer busy"
    yield d
    if d.telemetry().state in (MachineState.WORKING, MachineState.PAUSED):
        d.cancel()
    wait_for(lambda: d.telemetry().state is MachineState.IDLE, "the printer to be idle again")
    d.close()


def test_connect_reads_an_idle_printer(driver: OctoPrintDriver) -> None:
    t = driver.telemetry()
    assert (t.machine_id, t.state, t.job_id, t.progress) == ("prusa-01", MachineState.IDLE, None, 0.0)
    assert set(t.temperatures_c) == {"nozzle", "bed"}
    assert all(0 < c < 300 for c in t.temperatures_c.values())
    assert (t.operating_hours, t.wear_pct, t.energy_used_kwh) == (0.0, 0.0, 0.0)
    assert driver.job_run("never-started") == "unknown"


@pytest.mark.slow
def test_a_job_prints_to_done_and_counts_its_hours(driver: OctoPrintDriver, api: httpx.Client) -> None:
    started = time.monotonic()
    driver.start_job("job-1", 1.0)
    t = driver.telemetry()
    assert (t.state, t.job_id) == (MachineState.WORKING, "job-1")
    seen = [t.progress]
    while (run := driver.job_run("job-1")) == "running":
        if (t := driver.telemetry()).state is MachineState.WORKING:  # it may have ended since job_run
            seen.append(t.progress)
        assert time.monotonic() - started < 15, "a four-second print is still running after 15 s"
        time.sleep(0.1)
    took = time.monotonic() - started
    assert run == "done"
    assert seen == sorted(seen) and seen[-1] > seen[0], f"progress did not rise: {seen}"
    assert 1.5 < took < 8, f"a job of one market hour ({SPH:g} s) took {took:.1f} s"

    t = driver.telemetry()
    assert (t.state, t.job_id, t.progress) == (MachineState.IDLE, None, 0.0)
    assert 0.3 < t.operating_hours < took / SPH + 0.1
    assert t.energy_used_kwh == pytest.approx(PROFILE.energy_kw * t.operating_hours, abs=1e-5)
    assert t.wear_pct == pytest.approx(PROFILE.wear_pct_per_hour * t.operating_hours, abs=1e-5)
    assert api.get(f"/api/files/local/{file_name('job-1')}").json()["prints"]["success"] == 1


def test_start_job_twice_is_one_print(driver: OctoPrintDriver, api: httpx.Client) -> None:
    job = "order 7/twice"  # not a file name as it is: the driver maps it to one and back
    driver.start_job(job, 0.5)
    driver.start_job(job, 0.5)  # a resumed workflow repeats the call: no error, no second print
    assert driver.telemetry().job_id == job
    wait_for(lambda: driver.job_run(job) == "done", "the print to be done")
    driver.start_job(job, 0.5)  # and after it is done, too
    assert driver.telemetry().state is MachineState.IDLE
    prints = api.get(f"/api/files/local/{file_name(job)}").json()["prints"]
    assert (prints["success"], prints["failure"]) == (1, 0)


@pytest.mark.slow
def test_pause_holds_the_print_and_resume_finishes_it(driver: OctoPrintDriver, api: httpx.Client) -> None:
    driver.start_job("job-pause", 1.5)
    wait_for(lambda: driver.telemetry().progress > 0, "the print to make progress")
    driver.pause()
    t = wait_for(lambda: (t := driver.telemetry()).state is MachineState.PAUSED and t, "the printer to pause")
    assert (t.job_id, driver.job_run("job-pause")) == ("job-pause", "paused")
    # "Pausing" (already PAUSED to the driver) lasts while the line in flight finishes.
    wait_for(lambda: api.get("/api/job").json()["state"] == "Paused", "OctoPrint to finish pausing")
    held = driver.telemetry()
    time.sleep(1.0)
    later = driver.telemetry()
    assert later.state is MachineState.PAUSED
    assert later.progress == held.progress > 0
    assert later.operating_hours == held.operating_hours, "paused time counted as work"

    driver.resume()
    wait_for(lambda: driver.telemetry().state is MachineState.WORKING, "the print to resume")
    wait_for(lambda: driver.job_run("job-pause") == "done", "the resumed print to finish")
    assert driver.telemetry().operating_hours > later.operating_hours


def test_cancel_ends_the_job_and_a_busy_printer_refuses_more(octoprint: OctoPrintServer, driver: OctoPrintDriver) -> None:
    driver.start_job("job-cancel", 2.0)
    wait_for(lambda: driver.telemetry().progress > 0, "the print to make progress")
    with pytest.raises(CommandRejected, match="job-cancel"):
        driver.start_job("job-other", 1.0)
    with pytest.raises(CommandRejected, match="working"):
        driver.maintain()
    driver.cancel()
    assert driver.job_run("job-cancel") == "cancelled"
    wait_for(lambda: driver.telemetry().state is MachineState.IDLE, "the cancelled print to stop")
    # A driver that did not cancel it (a restart, or someone at the printer did) reads it the same.
    with new_driver(octoprint) as other:
        assert other.job_run("job-cancel") == "cancelled"
        assert other.job_run("job-other") == "unknown"


def test_heater_targets_reach_the_printer(driver: OctoPrintDriver, api: httpx.Client) -> None:
    def targets() -> tuple[float | None, float | None]:
        temps = api.get("/api/printer").json().get("temperature") or {}  # {} until the first report
        return (temps.get("tool0") or {}).get("target"), (temps.get("bed") or {}).get("target")

    driver.set("nozzle", 180)
    driver.set("bed", 50)  # whole degrees: the firmware keeps no fraction of a target
    wait_for(lambda: targets() == (180, 50), "the targets to show on the printer", timeout_s=10)
    driver.set("nozzle", 0)
    driver.set("bed", 0)
    wait_for(lambda: targets() == (0, 0), "the heaters to be off", timeout_s=10)


def test_commands_the_printer_cannot_do_are_refused(driver: OctoPrintDriver) -> None:
    for command in (driver.pause, driver.resume, driver.cancel):
        with pytest.raises(CommandRejected, match="prusa-01"):
            command()
    with pytest.raises(CommandRejected, match="bed, nozzle"):
        driver.set("chamber", 40)
    with pytest.raises(CommandRejected, match="between 0 and 270"):
        driver.set("nozzle", 999)
    with pytest.raises(CommandRejected, match="between 0 and 110"):
        driver.set("bed", -5)
    with pytest.raises(CommandRejected, match="does not travel"):
        driver.move_to(Point(x_km=1, y_km=2))
    with pytest.raises(CommandRejected, match="positive number of hours"):
        driver.start_job("job-zero", 0)
    assert driver.telemetry().state is MachineState.IDLE


def test_maintenance_resets_wear(octoprint: OctoPrintServer, driver: OctoPrintDriver) -> None:
    with new_driver(octoprint, wear_pct=42.0) as worn:
        assert worn.telemetry().wear_pct == 42.0
        worn.maintain()
        assert worn.telemetry().wear_pct == 0.0


def test_a_wrong_key_or_a_dead_url_is_a_driver_error(octoprint: OctoPrintServer) -> None:
    with OctoPrintDriver(PROFILE, octoprint.url, "not-the-key") as d, pytest.raises(DriverError, match="403"):
        d.telemetry()
    dead = f"http://127.0.0.1:{free_port()}"
    with OctoPrintDriver(PROFILE, dead, octoprint.api_key, timeout_s=1) as d:
        with pytest.raises(DriverError, match=f"unreachable.*{re.escape(dead)}"):
            d.telemetry()
        with pytest.raises(DriverError, match="unreachable"):
            d.connect()


def test_a_disconnected_printer_is_offline_and_a_bad_port_is_refused(octoprint: OctoPrintServer,
                                                                      api: httpx.Client) -> None:
    with new_driver(octoprint) as d:
        d.connect()
        before = d.telemetry().temperatures_c
        api.post("/api/connection", json={"command": "disconnect"}).raise_for_status()
        try:
            t = wait_for(lambda: (t := d.telemetry()).state is MachineState.OFFLINE and t, "the printer to go offline")
            assert t.temperatures_c.keys() == before.keys()
            with pytest.raises(CommandRejected, match="not ready to print"):
                d.start_job("job-offline", 1.0)
            with pytest.raises(CommandRejected, match="not connected"):
                d.set("nozzle", 100)
            with OctoPrintDriver(PROFILE, octoprint.url, octoprint.api_key, port="/dev/tamc-no-such-port") as bad, \
                    pytest.raises(DriverError, match=r"port '/dev/tamc-no-such-port'.*ports it offers: .*'VIRTUAL'"):
                bad.connect(wait_s=1.0)
        finally:
            d.connect()
        assert d.telemetry().state is MachineState.IDLE
