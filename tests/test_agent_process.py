"""``tamc agent``: machine nodes as their own processes on a shared broker and ledger. A node
killed mid-job is announced offline by its last will and the runner-up finishes the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.requester import JobOutcome, Requester, RequesterConfig
from core.clock import ScaledClock
from hub import topics
from hub.broker import RunningBroker
from hub.jobids import owned
from hub.messages import JobEvent
from hub.transport import Hub
from ledger import Identity, Ledger, settlement
from machines import JobSpec

ROOT = Path(__file__).resolve().parents[1]
PRUSA = (ROOT / "machines" / "profiles" / "prusa-01.toml").read_text("utf-8")
SPEED = 720.0  # a 1 h print takes 5 s


def _profiles(folder: Path) -> Path:
    folder.mkdir()
    (folder / "cheap.toml").write_text(PRUSA.replace('id = "prusa-01"', 'id = "proc-cheap"'), "utf-8")
    (folder / "dear.toml").write_text(
        PRUSA.replace('id = "prusa-01"', 'id = "proc-dear"').replace("margin_bps = 2000", "margin_bps = 4000"), "utf-8"
    )
    return folder


def _agent(machine: str, broker_url: str, ledger_url: str, tmp_path: Path, profiles: Path, market: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tamc", "agent", "--machine", machine, "--broker", broker_url, "--ledger", ledger_url,
         "--clock-from", market,  # the sped-up market's requester sets its time
         "--profiles", str(profiles), "--data-dir", str(tmp_path / machine), "--holders", "alice=3,bob=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _online(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    return dict(json.loads(line))


def test_killed_machine_process_is_taken_over_and_the_requester_charged_once(broker: RunningBroker, tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_url)
    profiles = _profiles(tmp_path / "profiles")
    identity = Identity.generate()
    cheap = _agent("proc-cheap", broker.admit("proc-cheap", "machine"), ledger_url, tmp_path, profiles, identity.did)
    dear = _agent("proc-dear", broker.admit("proc-dear", "machine"), ledger_url, tmp_path, profiles, identity.did)
    hub = None
    try:
        online = [_online(cheap), _online(dear)]
        assert [o["state"] for o in online] == ["online", "online"]
        assert all(str(o["memory"]).endswith("/memory (0 records)") for o in online), online  # each its own store
        wallet = settlement.open_requester(ledger, "proc", identity.did, 100_000_000)
        outcomes: list[JobOutcome] = []
        started: list[str] = []
        hub = Hub(broker.admit("proc-requester", "requester"), name="proc-requester", clock=ScaledClock(SPEED)).connect()  # the market runs SPEED x real time
        hub.subscribe(topics.events(owned(wallet, "proc-job")), lambda t, e: started.append(e.body.machine_id)  # type: ignore[union-attr]
                      if isinstance(e.body, JobEvent) and e.body.kind == "started" else None)
        requester = Requester(identity, hub, ledger, wallet, on_outcome=outcomes.append,
                              config=RequesterConfig(bid_window_s=1.0 * SPEED, accept_window_s=1.0 * SPEED)).start()
        time.sleep(0.5)
        job = JobSpec(id="proc-job", kind="printer_3d", capability="print", region="north", deadline_h=6,
                      material="PLA", size_mm=(80, 60, 40), amount=20)
        requester.post(job, reserve=20_000_000, value=30_000_000)
        deadline = time.monotonic() + 15
        while not started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started == ["proc-cheap"], "the cheaper machine should have won and started"
        cheap.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will tells
        cheap.wait(5)
        deadline = time.monotonic() + 30
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        [outcome] = outcomes
        assert outcome.outcome == "paid" and outcome.machine_id == "proc-dear" and outcome.takeovers == 1
        assert requester.awards_sent[owned(wallet, "proc-job")] == ["proc-cheap", "proc-dear"]
        assert ledger.balance(wallet) == 100_000_000 - (outcome.price or 0)  # charged once
        assert ledger.balance("machine:proc-cheap") == 0
        time.sleep(1.0)  # the runner-up settles its costs and pays its owners
        alice, bob = ledger.balance("holder:alice"), ledger.balance("holder:bob")
        assert alice > 0 and abs(alice - 3 * bob) <= 3
        requester.stop()
    finally:
        for proc in (cheap, dear):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        out, _ = dear.communicate(timeout=10)
        cheap.communicate(timeout=10)
        if hub is not None:
            hub.close()
    assert '"state": "offline"' in out  # a clean stop says goodbye


def test_agent_refuses_a_bad_broker_address_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "tamc", "agent", "--machine", "prusa-01", "--broker", "http://nope",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert run.returncode == 2
    assert "InvalidBrokerUrl" in run.stderr and "mqtt://user:password@host:port" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("holders", ["alice", "alice=0", "=3", ""])
def test_agent_holders_must_be_name_equals_units(holders: str) -> None:
    from core.errors import InputError
    from tamc.node_process import parse_holders

    with pytest.raises(InputError):
        parse_holders(holders)
