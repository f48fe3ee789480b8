"""``tamc requester`` killed mid-job: started again, it takes the job up where it stood (its journal
beside the ledger, its persistent broker session, its market clock) and the job ends once, paid;
never started again, its escrow is refunded after its expiry, to it alone. Machines, the requester
and the broker are separate processes on a real mosquitto and a shared SQLite ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import broker_kind
from test_agent_process import ROOT, SPEED, _agent, _online, _profiles

from core.clock import MarketAnchor, ScaledClock
from core.datadir import DataDir
from hub.broker import RunningBroker
from ledger import Keystore, Ledger, settlement
from tamc.requester_process import key_name

pytestmark = pytest.mark.skipif(broker_kind() != "mosquitto", reason="a persistent session is kept by mosquitto")

BUDGET = 100_000_000


def _job(tmp_path: Path, job_id: str, deadline_h: float) -> Path:
    path = tmp_path / f"{job_id}.json"
    path.write_text(json.dumps([{"id": job_id, "kind": "printer_3d", "capability": "print", "region": "north",
                                 "deadline_h": deadline_h, "max_price": "20.00", "material": "PLA",
                                 "size_mm": [80, 60, 40], "amount": 20}]), "utf-8")
    return path


def _requester(name: str, broker_url: str, ledger_url: str, jobs: Path, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tamc", "requester", "--name", name, "--broker", broker_url, "--ledger", ledger_url,
         "--jobs", str(jobs), "--budget", "100", "--speed", str(SPEED), "--bid-window-s", str(1.0 * SPEED),
         "--accept-window-s", str(1.0 * SPEED), "--data-dir", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    return dict(json.loads(line))


def _market(tmp_path: Path, broker: RunningBroker, name: str) -> tuple[str, Path, list[subprocess.Popen[str]], list[str]]:
    """Two machine processes following the requester's clock, and what they say of their jobs."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    data = tmp_path / name
    did = Keystore(DataDir(data).make().keys).get_or_create(key_name(name)).did  # the key the requester will load
    profiles = _profiles(tmp_path / "profiles")
    machines = [_agent(m, broker.admit(m, "machine"), ledger_url, tmp_path, profiles, did) for m in ("proc-cheap", "proc-dear")]
    assert [_online(p)["state"] for p in machines] == ["online", "online"]
    heard: list[str] = []

    def listen(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = json.loads(line).get("event")
            if event:
                heard.append(event)

    for p in machines:
        threading.Thread(target=listen, args=(p,), daemon=True).start()
    return ledger_url, data, machines, heard


def _wait(ready: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def test_a_requester_killed_mid_job_and_started_again_ends_the_job_once_paid(broker: RunningBroker, tmp_path: Path) -> None:
    name = "rq-again"
    ledger_url, data, machines, heard = _market(tmp_path, broker, name)
    url = broker.admit(key_name(name), "requester")
    jobs = _job(tmp_path, "again-1", 6)
    procs = list(machines)
    try:
        first = _requester(name, url, ledger_url, jobs, data)
        procs.append(first)
        assert _line(first)["state"] == "online"
        _wait(lambda: "started" in heard, 30, f"the machine to start the job (heard {heard})")
        first.send_signal(signal.SIGKILL)  # mid-job: funded, running, not yet done
        first.communicate(timeout=10)
        _wait(lambda: "done" in heard, 60, "the machine to finish while the requester is gone")
        again = _requester(name, url, ledger_url, jobs, data)
        procs.append(again)
        online = _line(again)
        assert online["state"] == "online" and online["resumed"] == 1 and online["ended_before"] == 0
        ending = _line(again)  # the 'done' the broker kept for its session arrives, and it pays
        assert ending["outcome"] == "paid", ending
        again.communicate(timeout=20)
        assert again.returncode == 0
        ledger = Ledger(ledger_url)
        job_id = ending["job"]
        assert ledger.escrow(job_id).state.value == "released"
        assert ledger.balance(settlement.requester_account(name)) == BUDGET - ending["price"]
        assert heard.count("started") == 1 and heard.count("done") == 1
        assert ledger.posting(f"split:{job_id}:{ending['machine']}") is not None  # the machine was paid, and paid its holders
        assert ledger.audit() == []
        third = _requester(name, url, ledger_url, jobs, data)  # run once more: nothing is posted twice
        procs.append(third)
        assert _line(third) | {"did": None, "wallet": None} == {
            "requester": name, "did": None, "wallet": None, "state": "online", "resumed": 0, "ended_before": 1}
        third.communicate(timeout=20)
        assert third.returncode == 0 and ledger.balance(settlement.requester_account(name)) == BUDGET - ending["price"]
        ledger.close()
    finally:
        _stop(procs)


def test_a_requester_that_never_comes_back_is_refunded_after_its_escrow_expires(broker: RunningBroker, tmp_path: Path) -> None:
    name = "rq-gone"
    ledger_url, data, machines, heard = _market(tmp_path, broker, name)
    procs = list(machines)
    try:
        gone = _requester(name, broker.admit(key_name(name), "requester"), ledger_url, _job(tmp_path, "gone-1", 1.5), data)
        procs.append(gone)
        did = _line(gone)["did"]
        _wait(lambda: "started" in heard, 30, "the job to be funded and started")
        gone.send_signal(signal.SIGKILL)
        gone.communicate(timeout=10)
        ledger = Ledger(ledger_url)
        wallet = settlement.requester_account(name)
        (job_id,) = [a.id.removeprefix("escrow:") for a in ledger.accounts() if a.id.startswith(f"escrow:{wallet}.")]
        escrow = ledger.escrow(job_id)
        assert escrow.expires_at is not None and escrow.state.value == "held"
        # a sweeper keeping the market's time (the requester's anchor): nothing before the expiry
        # (the deadline and the grace), then the escrow goes back to its payer
        anchor = MarketAnchor(**json.loads((data / "requester-clock.json").read_text("utf-8")))
        ledger.clock = ScaledClock.resume(anchor)
        assert ledger.clock.now() < escrow.expires_at and settlement.expire_due(ledger) == []
        _wait(lambda: ledger.clock.now() >= escrow.expires_at, 30, "the escrow's expiry")
        assert settlement.expire_due(ledger) == [job_id]
        assert ledger.escrow(job_id).state.value == "refunded" and ledger.balance(wallet) == BUDGET
        assert settlement.account_owner(ledger, wallet) == did and ledger.audit() == []
        ledger.close()
    finally:
        _stop(procs)


def test_the_broker_killed_and_restarted_mid_job_loses_nothing(tmp_path: Path) -> None:
    """mosquitto (persistence on) SIGKILLed while a job runs and started again on its port from its
    folder: every client reconnects, what was sent in the gap arrives, and the job is paid once."""
    from core.net import free_port
    from hub.broker import BrokerHome, start_broker

    port, home, name = free_port(), BrokerHome(tmp_path / "broker"), "rq-broker"
    first = start_broker("mosquitto", port=port, home=home, persistence=True)
    broker = first.__enter__()
    procs: list[subprocess.Popen[str]] = []
    try:
        ledger_url, data, machines, heard = _market(tmp_path, broker, name)
        procs += machines
        requester = _requester(name, broker.admit(key_name(name), "requester"), ledger_url, _job(tmp_path, "broker-1", 6), data)
        procs.append(requester)
        assert _line(requester)["state"] == "online"
        _wait(lambda: "started" in heard, 30, f"the machine to start the job (heard {heard})")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(10)
        first.__exit__(None, None, None)  # its folder stays: users, ACL and the saved sessions
        time.sleep(2.0)  # the job goes on meanwhile; what the machine says waits in its client
        with start_broker("mosquitto", port=port, home=home, persistence=True):
            ending = _line(requester)
            assert ending["outcome"] == "paid", ending
            requester.communicate(timeout=30)
            assert requester.returncode == 0
            ledger = Ledger(ledger_url)
            assert ledger.escrow(ending["job"]).state.value == "released" and ledger.audit() == []
            assert ledger.balance(settlement.requester_account(name)) == BUDGET - ending["price"]
            assert heard.count("started") == 1
            ledger.close()
            _stop(procs)
    finally:
        _stop(procs)
