"""``tamc campaign``: a busy market of separate processes, with faults on a seeded schedule.

A private mosquitto (persistence on), machines as ``tamc agent`` processes, the requester as a
``tamc requester`` process, one ledger they share (a SQLite file, or a private PostgreSQL server).
While the requester posts its jobs, the harness SIGKILLs and restarts, one at a time and at seeded
moments, the broker, machine processes, the requester and PostgreSQL, and cuts every connection to
the broker for a while (the clients reach it through a TCP gate the harness controls,
``hub.gate``). Every process's output and every fault goes into ``history.jsonl`` with the
time it was seen (each process's log into ``logs/``); when the requester has seen every job end, ``market.history.check`` reads the
whole history and the ledger and gives the verdict. The same seed gives the same schedule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, Field, model_validator

from core.datadir import DataDir
from core.net import free_port
from hub.access import Role
from hub.broker import BrokerHome, RunningBroker, start_broker
from hub.cluster import NatsCluster
from hub.gate import ConnectionGate, open_gate
from ledger import Keystore, Ledger, settlement
from market.history import Op, Verdict, check, load, record
from tamc.postgres import PrivatePostgres
from tamc.requester_process import key_name

__all__ = ["CampaignConfig", "CampaignResult", "run_campaign"]

log = logging.getLogger("tamc.campaign")

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "machines" / "profiles" / "prusa-01.toml"
REQUESTER = "camp"


WARM_UP_S = 120.0
"""At most this long (real seconds) the faults wait for the market's first paid job."""


class CampaignConfig(BaseModel):
    jobs: int = Field(default=100, ge=1)
    machines: int = Field(default=4, ge=2)
    seed: int = 1
    speed: float = Field(default=720.0, gt=0)
    """Market seconds per real second: a 1 h print takes 5 s."""
    every_s: float = Field(default=360.0, ge=0)
    """Market seconds between two jobs' calls."""
    deadline_h: float = Field(default=12.0, gt=0)
    broker_kills: int = Field(default=2, ge=0)
    machine_kills: int = Field(default=3, ge=0)
    requester_kills: int = Field(default=3, ge=0)
    network_cuts: int = Field(default=2, ge=0)
    """Times every connection to the broker is severed (at a gate in front of it) and restored."""
    broker: Literal["mosquitto", "nats-cluster"] = "mosquitto"
    """One mosquitto (persistence on), or three NATS nodes clustered (JetStream, MQTT 3.1.1) with
    the processes spread over them; a broker kill then kills one node."""
    ledger: Literal["sqlite", "postgres"] = "sqlite"
    """One SQLite file the processes share, or a private PostgreSQL server (which can be restarted)."""
    postgres_restarts: int = Field(default=0, ge=0)
    """Times the PostgreSQL server under the ledger is SIGKILLed (with every backend) and started again."""
    down_s: tuple[float, float] = (0.5, 2.5)
    """How long (real seconds) a killed process stays down, drawn from this range."""
    timeout_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _restarts_need_postgres(self) -> CampaignConfig:
        if self.postgres_restarts and self.ledger != "postgres":
            raise ValueError("postgres_restarts needs ledger='postgres' (a SQLite file has no server to restart)")
        return self


class CampaignResult(BaseModel):
    verdict: Verdict
    seconds: float
    history: str
    jobs_per_s: float


class _Run:
    """The processes of one campaign, and the history they write."""

    def __init__(self, config: CampaignConfig, folder: Path, out: IO[str]) -> None:
        self.config, self.folder, self.out = config, folder, out
        self.began = time.monotonic()
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.commands: dict[str, list[str]] = {}
        self.requester_done = threading.Event()
        self.first_paid = threading.Event()
        """The market has paid a job: it works, and the faults may begin."""

    def note(self, **fields: Any) -> None:
        op = Op(t=round(time.monotonic() - self.began, 3), **fields)
        with self.lock:
            record(self.out, op)
            self.out.flush()

    def spawn(self, name: str, command: list[str]) -> None:
        self.commands[name] = command
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("a", encoding="utf-8") as log_file:  # each run of the process appends its log
            proc = subprocess.Popen([sys.executable, "-m", "tamc", *command], stdout=subprocess.PIPE, stderr=log_file,
                                    text=True, cwd=ROOT, env={"PYTHONUNBUFFERED": "1", **_env()})
        self.procs[name] = proc
        threading.Thread(target=self._read, args=(name, proc), daemon=True, name=f"read-{name}").start()

    def _read(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                said = json.loads(line)
            except ValueError:
                continue
            if "event" in said:
                self.note(process=name, kind="event", job=said.get("job"), machine=said.get("machine"), what=said["event"])
            elif "outcome" in said:
                self.note(process=name, kind="ended", job=said.get("job"), machine=said.get("machine"), what=said["outcome"],
                          detail={"price": said.get("price"), "reason": said.get("reason")})
                if said["outcome"] == "paid":
                    self.first_paid.set()
        proc.stdout.close()
        if name == REQUESTER and proc.wait() == 0:
            self.requester_done.set()

    def kill(self, name: str, machine: str | None = None) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.note(process="harness", kind="fault", what="kill", machine=machine, detail={"target": "requester" if name == REQUESTER else name})

    def restart(self, name: str, machine: str | None = None) -> None:
        self.spawn(name, self.commands[name])
        self.note(process="harness", kind="fault", what="restart", machine=machine, detail={"target": "requester" if name == REQUESTER else name})

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def run_campaign(config: CampaignConfig, folder: Path, *, progress: Callable[[str], None] = print,
                 postgres: PrivatePostgres | None = None) -> CampaignResult:
    """Run the campaign in ``folder`` (made if missing) and check it. With ``ledger='postgres'`` the
    ledger lives on ``postgres`` if given (the caller keeps it, to read the ledger afterwards), else
    on a private server made for the run."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if config.ledger == "postgres" and postgres is None:
            postgres = stack.enter_context(PrivatePostgres())
        ledger_url = postgres.url if config.ledger == "postgres" and postgres else f"sqlite:///{(folder / 'ledger.db').resolve()}"
        return _campaign(config, folder, progress, ledger_url, postgres)


def _campaign(config: CampaignConfig, folder: Path, progress: Callable[[str], None], ledger_url: str,
              postgres: PrivatePostgres | None) -> CampaignResult:
    rng = random.Random(config.seed)
    requester_data = folder / "requester"
    did = Keystore(DataDir(requester_data).make().keys).get_or_create(key_name(REQUESTER)).did
    profiles = _profiles(folder / "profiles", config.machines)
    jobs = _jobs(folder / "jobs.json", config, rng)
    posted = [f"{settlement.requester_account(REQUESTER)}.{j}" for j in jobs]
    history = folder / "history.jsonl"
    broker: _Mosquitto | _Cluster = _Mosquitto(folder / "broker") if config.broker == "mosquitto" else _Cluster(folder / "broker")
    # the network: every client reaches the broker through a gate in front of its node
    gates = [ConnectionGate(("127.0.0.1", port), burst=10_000, per_s=10_000.0) for port in broker.ports]
    with contextlib.ExitStack() as stack, history.open("w", encoding="utf-8") as out:
        stack.callback(broker.close)
        via = {port: stack.enter_context(open_gate(gate, "127.0.0.1", 0))[1] for port, gate in zip(broker.ports, gates, strict=True)}

        def admit(name: str, role: Role) -> str:
            url = broker.admit(name, role)
            for port in broker.ports:  # every node it may reach (a cluster's failover nodes too), through its gate
                url = re.sub(rf":{port}\b", f":{via[port]}", url)
            return url

        run = _Run(config, folder, out)
        try:
            for i in range(1, config.machines + 1):
                m = f"camp-{i}"
                run.spawn(m, ["agent", "--machine", m, "--broker", admit(m, "machine"), "--ledger", ledger_url,
                              "--clock-from", did, "--profiles", str(profiles), "--data-dir", str(folder / m),
                              "--holders", "alice=3,bob=1", "--no-memory"])
            time.sleep(2.0)  # the machines' presence is up before the first call
            s = config.speed
            run.spawn(REQUESTER, ["requester", "--name", REQUESTER, "--broker", admit(key_name(REQUESTER), "requester"),
                                  "--jobs", str(folder / "jobs.json"), "--ledger", ledger_url, "--budget", "100000",
                                  "--speed", str(s), "--bid-window-s", str(1.0 * s), "--accept-window-s", str(1.5 * s),
                                  "--every-s", str(config.every_s), "--data-dir", str(requester_data)])
            posting_s = config.jobs * config.every_s / s
            # faults strike a market that works: the schedule starts once a first job is paid (a cold
            # cluster, or a busy machine, can take seconds to carry its first messages)
            if not run.first_paid.wait(WARM_UP_S):
                progress(f"campaign: no job paid within {WARM_UP_S:.0f} s; the faults begin anyway")
            began = time.monotonic()
            for at, kind, target in _schedule(config, rng, posting_s):
                wait = at - (time.monotonic() - began)
                if wait > 0:
                    time.sleep(wait)
                down = rng.uniform(*config.down_s)
                progress(f"campaign: {kind} {target or ''} at {time.monotonic() - run.began:.1f} s, down {down:.1f} s")
                if kind == "network":
                    for gate in gates:
                        gate.cut()
                    run.note(process="harness", kind="fault", what="cut", detail={"target": "network"})
                    time.sleep(down)
                    for gate in gates:
                        gate.restore()
                    run.note(process="harness", kind="fault", what="restore", detail={"target": "network"})
                elif kind == "broker":
                    node = broker.kill(rng)
                    run.note(process="harness", kind="fault", what="kill", detail={"target": "broker", "node": node})
                    time.sleep(down)
                    broker.start(node)
                    run.note(process="harness", kind="fault", what="restart", detail={"target": "broker", "node": node})
                elif kind == "postgres":
                    assert postgres is not None
                    postgres.kill()
                    run.note(process="harness", kind="fault", what="kill", detail={"target": kind})
                    time.sleep(down)
                    postgres.start()
                    run.note(process="harness", kind="fault", what="restart", detail={"target": kind})
                else:
                    name = target or REQUESTER
                    run.kill(name, machine=target)
                    time.sleep(down)
                    run.restart(name, machine=target)
            if not run.requester_done.wait(config.timeout_s - (time.monotonic() - run.began)):
                progress("campaign: the requester did not see every job end in time")
        finally:
            run.stop()
        seconds = time.monotonic() - run.began
    ledger = Ledger(ledger_url)
    try:
        verdict = check(load(history), ledger, posted)
    finally:
        ledger.close()
    return CampaignResult(verdict=verdict, seconds=round(seconds, 1), history=str(history),
                          jobs_per_s=round(config.jobs / seconds, 3))


def _schedule(config: CampaignConfig, rng: random.Random, posting_s: float) -> list[tuple[float, str, str | None]]:
    """Seeded fault moments (seconds after the first paid job) while jobs are being posted and run,
    spaced so two never overlap."""
    kinds: list[tuple[str, str | None]] = [("broker", None)] * config.broker_kills
    kinds += [("machine", f"camp-{rng.randint(1, config.machines)}") for _ in range(config.machine_kills)]
    kinds += [("requester", None)] * config.requester_kills
    kinds += [("network", None)] * config.network_cuts
    kinds += [("postgres", None)] * config.postgres_restarts
    rng.shuffle(kinds)
    span = max(posting_s, 5.0 * len(kinds)) + 5.0
    slot = span / max(len(kinds), 1)
    return [(3.0 + n * slot + rng.uniform(0, slot * 0.4), kind, target if kind == "machine" else None)
            for n, (kind, target) in enumerate(kinds)]


class _Mosquitto:
    """The campaign's mosquitto, which the schedule kills and starts again on its port, from its folder."""

    def __init__(self, folder: Path) -> None:
        self.port, self.home = free_port(), BrokerHome(folder)
        self.ports = [self.port]
        self._stack = contextlib.ExitStack()
        self.running = self._start()

    def _start(self) -> RunningBroker:
        return self._stack.enter_context(start_broker("mosquitto", port=self.port, home=self.home, persistence=True))

    def admit(self, name: str, role: Role) -> str:
        return self.running.admit(name, role)

    def kill(self, rng: random.Random) -> int:
        assert self.running.proc is not None
        self.running.proc.send_signal(signal.SIGKILL)
        self.running.proc.wait(10)
        self._stack.close()
        return 0

    def start(self, node: int) -> None:
        self.running = self._start()

    def close(self) -> None:
        self._stack.close()


class _Cluster:
    """Three NATS nodes; participants go to them in turn; a kill takes a seeded node down."""

    def __init__(self, folder: Path) -> None:
        self.cluster = NatsCluster(folder, nodes=3)
        self.ports = [n.ports["mqtt"] for n in self.cluster.nodes]
        self._admitted = 0

    def admit(self, name: str, role: Role) -> str:
        """The participant's URL: its node (each in turn), then the others to fail over to."""
        node = self._admitted % len(self.ports)
        self._admitted += 1
        return self.cluster.admit(name, role, node)

    def kill(self, rng: random.Random) -> int:
        node = rng.randrange(len(self.ports))
        self.cluster.kill(node)
        return node

    def start(self, node: int) -> None:
        self.cluster.start(node)

    def close(self) -> None:
        self.cluster.close()


def _profiles(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = PROFILE.read_text("utf-8")
    for i in range(1, count + 1):
        (folder / f"camp-{i}.toml").write_text(text.replace('id = "prusa-01"', f'id = "camp-{i}"'), "utf-8")
    return folder


def _jobs(path: Path, config: CampaignConfig, rng: random.Random) -> list[str]:
    jobs = [{"id": f"c-{n:04d}", "kind": "printer_3d", "capability": "print", "region": "north",
             "deadline_h": config.deadline_h, "max_price": "20.00", "material": "PLA", "size_mm": [60, 50, 30],
             "amount": rng.randint(8, 30)} for n in range(config.jobs)]
    path.write_text(json.dumps(jobs), "utf-8")
    return [str(j["id"]) for j in jobs]


def _env() -> dict[str, str]:
    """The harness's environment, without TAMC settings that would point the processes elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TAMC_")}
