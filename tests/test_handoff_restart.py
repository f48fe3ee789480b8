"""A machine process killed while its handoff waits for an operator: restarted, it finds the handoff
still pending (its workflow checkpoint in SQLite, the handoff in the ledger), and resuming it pays
once, bids once and carries out each command once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_agent_process import _online
from test_handoff import Console

from agents.requester import JobOutcome, Requester, RequesterConfig
from agents.workflow import JobFlows, checkpointer
from core.clock import ScaledClock
from hub import topics
from hub.broker import RunningBroker
from hub.messages import Bid, JobEvent
from hub.transport import Hub
from ledger import Identity, Ledger, settlement
from ledger.operations import Operations, Role
from machines import JobSpec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPEED = 1800.0  # a 2 h print takes 4 s
JOB = "requester:restart.j-restart"
"""The job, in the namespace of the requester's wallet (``hub.jobids``)."""


def _agent(broker_url: str, ledger_url: str, data: Path, market: str, *, fault: bool) -> subprocess.Popen[str]:
    """The node; ``fault`` makes its simulated nozzle run away at a fifth of the job (once: not after the restart)."""
    (data / "charter.json").write_text(json.dumps({"handoff_wait_h": 1000}), "utf-8")
    inject = ["--inject", f"{JOB}=thermal_runaway@0.2"] if fault else []
    return subprocess.Popen(
        [sys.executable, "-m", "tamc", "agent", "--machine", "prusa-01", "--broker", broker_url, "--ledger", ledger_url,
         "--data-dir", str(data), "--no-memory", "--charter", str(data / "charter.json"), "--clock-from", market, *inject],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _output(proc: subprocess.Popen[str]) -> str:
    """What the agent said, for a failure's message (it is stopped first)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    return f"stdout:\n{out}\nstderr:\n{err[-3000:]}"


def test_killed_with_a_pending_handoff_restarts_it_pending_and_resumes_without_duplicates(broker: RunningBroker, tmp_path: Path) -> None:
    data = tmp_path / "prusa"
    data.mkdir()
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_url)
    ops = Operations(ledger.engine)
    machine_url = broker.admit("prusa-01", "machine")
    requester_id = Identity.generate()  # the sped-up market's requester: its calls set the node's time
    proc = _agent(machine_url, ledger_url, data, requester_id.did, fault=True)
    hubs: list[Hub] = []
    try:
        online = _online(proc)
        assert online["checkpoints"] == str(data / "workflows.db"), online
        op = Identity.generate()
        ops.grant(op.did, Role.OPERATOR, "prusa-01")
        hub = Hub(broker.admit("restart-test", "requester"), name="restart-test", clock=ScaledClock(SPEED)).connect()  # the market runs SPEED x real time
        hubs.append(hub)
        operator_hub = Hub(broker.admit("restart-operator", "operator"), name="restart-operator", clock=ScaledClock(SPEED)).connect()
        hubs.append(operator_hub)
        console = Console(operator_hub, op, "prusa-01")
        bids: list[Bid] = []
        events: list[JobEvent] = []
        hub.subscribe(topics.bids(JOB), lambda t, e: bids.append(e.body))  # type: ignore[arg-type]
        hub.subscribe(topics.events(JOB), lambda t, e: events.append(e.body))  # type: ignore[arg-type]
        wallet = settlement.open_requester(ledger, "restart", requester_id.did, 100_000_000)
        outcomes: list[JobOutcome] = []
        requester = Requester(requester_id, hub, ledger, wallet, on_outcome=outcomes.append,
                              config=RequesterConfig(bid_window_s=1.0 * SPEED, accept_window_s=1.0 * SPEED)).start()
        time.sleep(0.5)
        job = JobSpec(id=JOB, kind="printer_3d", capability="print", region="north", deadline_h=200,
                      material="PLA", size_mm=(80, 60, 40), amount=40)
        requester.post(job, reserve=20_000_000, value=30_000_000)
        raised = console.wait_handoff("pending", timeout=20)
        assert raised.reason == "anomaly.temperature"

        proc.send_signal(signal.SIGKILL)  # no goodbye: the broker says offline by the last will
        proc.communicate(timeout=10)
        time.sleep(0.5)
        assert [h.id for h in ops.open_handoffs("prusa-01")] == [raised.handoff_id]  # still pending, in the ledger
        assert ops.open_flows("prusa-01") == [f"prusa-01/{JOB}"]
        with checkpointer(f"sqlite:///{data / 'workflows.db'}") as saver:  # and in the workflow's checkpoint
            status = JobFlows(saver).status(f"prusa-01/{JOB}")
        assert status is not None and not status.ended, status
        assert not outcomes  # the requester keeps the contract: a person is to look at it

        proc = _agent(machine_url, ledger_url, data, requester_id.did, fault=False)
        _online(proc)
        took = console.send("takeover", handoff_id=raised.handoff_id)
        assert took.ok, took.result  # the restarted node knows its pending handoff
        cooled = console.send("set", name="nozzle", value=215)
        assert cooled.ok, f"{cooled.result}\n{_output(proc)}"
        again = console.send("takeover", handoff_id=raised.handoff_id, command_id=next(iter(
            r.command_id for r in ops.audit_log("prusa-01") if r.command == "takeover")))
        assert again.ok and again.result == took.result  # redelivered: answered, not carried out again
        assert console.send("handback", decision="continue").ok

        deadline = time.monotonic() + 30
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outcomes and outcomes[0].outcome == "paid", _output(proc)
        time.sleep(0.5)
        assert len(bids) == 1  # one bid, before the restart
        kinds = [e.kind for e in events if e.kind != "progress"]
        assert kinds.count("started") == 1 and kinds.count("done") == 1 and kinds.count("paid") == 1, kinds
        assert kinds.count("handoff") == 1
        assert ledger.balance(wallet) == 100_000_000 - outcomes[0].price  # charged once
        assert [(r.command, r.ok) for r in reversed(ops.audit_log("prusa-01"))] == [
            ("takeover", True), ("set", True), ("handback", True)]
        keys = [line.key for line in ledger.statement(settlement.machine_wallet("prusa-01"), limit=None)]
        assert keys.count(f"release:{JOB}") == 1 and keys.count(f"split:{JOB}:prusa-01") == 1, keys
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for h in hubs:
            h.close()
