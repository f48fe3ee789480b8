"""A TAMC printer node on a real OctoPrint (its bundled virtual printer), in a served city: it wins a
requester's job, prints it, an operator pauses and resumes it through the console over HTTP, it
finishes and is paid once."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from city import until
from octoprint_server import OctoPrintServer
from octoprint_server import octoprint as octoprint

from agents.node import MachineNode
from agents.workflow import JobFlows, checkpointer
from hub.transport import Hub
from ledger import Identity, settlement
from machines import load_profiles
from machines.driver import MachineState
from machines.octoprint import OctoPrintDriver, file_name
from server.runner import Served

pytestmark = pytest.mark.slow

JOB = {"kind": "printer_3d", "capability": "print", "region": "north", "deadline_h": 200, "reserve": 80_000_000,
       "material": "PLA", "size_mm": [40, 40, 20], "amount": 20, "description": "a real print"}  # 1 h: 6 s at the city's 600x


@pytest.fixture
def octo_node(served: Served, octoprint: OctoPrintServer) -> Iterator[MachineNode]:
    """A printer node driving the real OctoPrint, cheaper than the city's own printers, in the served city."""
    base = load_profiles()["prusa-01"]
    profile = base.model_copy(update={"id": "octo-n1", "name": "Virtual printer on OctoPrint", "region": "north",
                                      "territory": ("north",), "policy": base.policy.model_copy(update={"margin_bps": 0, "price_floor": 1})})
    identity = Identity.generate()
    settlement.register_machine(served.city.ledger, profile.id, identity.did, {"alice": 100})
    driver = OctoPrintDriver(profile, octoprint.url, octoprint.api_key)
    driver.connect()
    folder = tempfile.mkdtemp()
    with checkpointer(f"sqlite:///{Path(folder) / 'workflows.db'}") as saver:
        node = MachineNode(profile, identity, Hub(served.city.admit(profile.id, "machine"), name=profile.id, clock=served.city.clock), ledger=served.city.ledger,
                           driver=driver, flows=JobFlows(saver), tick_s=0.3).start()
        served.city.nodes.append(node)
        try:
            yield node
        finally:
            served.city.nodes.remove(node)
            node.stop()
            node.hub.close()
            driver.close()


def _api(served: Served, who: str) -> httpx.Client:
    return httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.login(who).token}"}, timeout=30)


def test_a_real_printer_wins_prints_is_paused_and_resumed_by_an_operator_and_is_paid(served: Served, octo_node: MachineNode,
                                                                                   octoprint: OctoPrintServer) -> None:
    driver = octo_node.driver
    assert isinstance(driver, OctoPrintDriver)
    with _api(served, "rita") as rita, _api(served, "olga") as olga:
        posted = rita.post("/v1/jobs", json=JOB)
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["job_id"]
        printing = until(driver.telemetry, lambda t: t.state is MachineState.WORKING and t.job_id == job_id, timeout=30)
        assert printing.job_id == job_id, f"the OctoPrint node did not start printing: {printing}"
        octo = httpx.get(f"{octoprint.url}/api/job", headers={"X-Api-Key": octoprint.api_key}).json()
        assert octo["state"] == "Printing" and octo["job"]["file"]["name"] == file_name(job_id)

        took = olga.post("/v1/machines/octo-n1/control", json={"command": "takeover"})
        assert took.status_code == 200, took.text  # the workflow paused the print safely for the operator
        assert until(driver.telemetry, lambda t: t.state is MachineState.PAUSED, timeout=10).state is MachineState.PAUSED
        held = until(lambda: httpx.get(f"{octoprint.url}/api/job", headers={"X-Api-Key": octoprint.api_key}).json(),
                      lambda j: j["state"] == "Paused", timeout=10)
        assert held["state"] == "Paused"
        progress = driver.telemetry().progress
        time.sleep(1.0)
        assert driver.telemetry().progress == progress  # nothing printed while paused
        assert olga.post("/v1/machines/octo-n1/control", json={"command": "resume"}).status_code == 200
        assert until(driver.telemetry, lambda t: t.state is MachineState.WORKING, timeout=10).state is MachineState.WORKING
        assert olga.post("/v1/machines/octo-n1/control", json={"command": "pause"}).status_code == 200
        assert olga.post("/v1/machines/octo-n1/control", json={"command": "set", "name": "bed", "value": 55}).status_code == 200
        moved = olga.post("/v1/machines/octo-n1/control", json={"command": "move_to", "point": {"x_km": 1, "y_km": 2}})
        assert moved.status_code == 409 and "does not travel" in moved.json()["detail"]
        assert olga.post("/v1/machines/octo-n1/control", json={"command": "resume"}).status_code == 200
        back = olga.post("/v1/machines/octo-n1/control", json={"command": "handback", "decision": "continue"})
        assert back.status_code == 200, back.text

        status = until(lambda: rita.get(f"/v1/jobs/{job_id}").json(), lambda s: s["state"] in ("paid", "refunded", "expired"),
                        timeout=90)
        assert status["state"] == "paid" and status["machine_id"] == "octo-n1", status
        assert driver.job_run(job_id) == "done"
        deadline = time.monotonic() + 10
        while not octo_node.stats.settled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [j for j, _ in octo_node.stats.settled] == [job_id]  # paid once, settled once
        assert served.city.ledger.escrow(job_id).state.value == "released"
        assert driver.telemetry().operating_hours > 0
        audit = olga.get("/v1/machines/octo-n1/control/audit").json()
        assert [a["command"] for a in reversed(audit)] == ["takeover", "resume", "pause", "set", "move_to", "resume", "handback"]
