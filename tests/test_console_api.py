"""The operator console over real HTTP, on a running city: a requester's job runs into an injected
anomaly, the machine stops safely and hands off, an operator takes over through the API, sends
commands, hands back, and the job is paid once. Only operators may command; every command is audited."""

from __future__ import annotations

import time

import httpx
import pytest
from city import until
from test_server_api import client

from machines.faults import FaultyDriver
from server.runner import Served

pytestmark = pytest.mark.slow

JOB = {"kind": "printer_3d", "capability": "print", "region": "north", "deadline_h": 100, "reserve": 80_000_000,
       "material": "PLA", "size_mm": [60, 40, 30], "amount": 20, "description": "a bracket"}


def faulty(node: object) -> FaultyDriver:
    driver = getattr(node, "driver", None)
    assert isinstance(driver, FaultyDriver), "a simulated city's machines run on a fault-planning simulator"
    return driver


def test_an_anomaly_is_handed_to_an_operator_who_takes_over_commands_and_hands_back(served: Served) -> None:
    rita, olga, alice = client(served, "rita"), client(served, "olga"), client(served, "alice")
    posted = rita.post("/v1/jobs", json=JOB)
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["job_id"]
    for node in served.city.nodes:  # whichever printer wins, its nozzle runs away a fifth of the way in
        faulty(node).plan(job_id, 0.2, "thermal_runaway")

    queue = until(lambda: olga.get("/v1/handoffs").json(), lambda q: any(h["job_id"] == job_id for h in q))
    [handoff] = [h for h in queue if h["job_id"] == job_id]
    machine = handoff["machine_id"]
    assert handoff["state"] == "pending" and handoff["reason"] == "anomaly.temperature", handoff
    assert handoff["proposal"] and handoff["context"]["reading"]["temperatures_c"]["nozzle"] > 270  # what tripped it
    node = served.city.node(machine)
    assert node is not None and node.telemetry().state.value == "paused"  # the safe state, before anyone came

    refused = alice.post(f"/v1/machines/{machine}/control", json={"command": "takeover", "handoff_id": handoff["id"]})
    assert refused.status_code == 403, refused.text  # a stakeholder, not an operator
    assert client(served).post(f"/v1/machines/{machine}/control", json={"command": "takeover"}).status_code == 401
    early = olga.post(f"/v1/machines/{machine}/control", json={"command": "resume"})
    assert early.status_code == 403 and early.json()["error"] == "NotInControl"

    took = olga.post(f"/v1/machines/{machine}/control", json={"command": "takeover", "handoff_id": handoff["id"]})
    assert took.status_code == 200, took.text
    taken_at = time.time()
    assert took.json()["answered_ms"] < 1000
    assert [h["state"] for h in olga.get("/v1/handoffs").json() if h["id"] == handoff["id"]] == ["taken"]
    again = olga.post(f"/v1/machines/{machine}/control", json={"command": "pause"})
    assert again.status_code == 409 and again.json()["error"] == "CommandRejected"  # paused already, safely
    for command in ({"command": "set", "name": "nozzle", "value": 215}, {"command": "resume"}, {"command": "pause"}):
        r = olga.post(f"/v1/machines/{machine}/control", json=command)
        assert r.status_code == 200, r.text
    time.sleep(0.5)
    assert [a for a in node.actions if a[0] > taken_at and a[1] == "agent"] == []  # the agent stands by

    back = olga.post(f"/v1/machines/{machine}/control", json={"command": "handback", "decision": "continue"})
    assert back.status_code == 200, back.text
    status = until(lambda: rita.get(f"/v1/jobs/{job_id}").json(), lambda s: s["state"] in ("paid", "refunded", "expired"))
    assert status["state"] == "paid" and status["machine_id"] == machine, status
    kinds = [s["kind"] for s in status["steps"]]
    assert kinds.count("handoff") == 1 and kinds.count("resumed") == 1 and kinds.count("done") == 1, kinds
    assert rita.get("/v1/me").json()["balance"] == 5_000_000_000 - status["price"]  # charged once
    assert served.city.ledger.escrow(job_id).state.value == "released"

    audit = olga.get(f"/v1/machines/{machine}/control/audit").json()
    assert [(a["command"], a["ok"]) for a in reversed(audit)] == [
        ("resume", False), ("takeover", True), ("pause", False), ("set", True), ("resume", True), ("pause", True), ("handback", True)]
    assert {a["operator"] for a in audit} == {served.login("olga").did}
    assert [h for h in olga.get("/v1/handoffs").json() if h["machine_id"] == machine] == []
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'tamc_operator_commands_total{command="takeover"} 1.0' in metrics
