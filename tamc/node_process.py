"""``tamc agent``: one machine node in its own process, the scale-out path (one per machine's own
computer, a shared broker, a shared ledger). It registers the machine on first start, connects
with a last will, follows the market's clock from the calls it hears, and logs each job step."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.node import MachineNode
from agents.snapshot import save_snapshot
from agents.workflow import JobFlows, checkpointer
from core.clock import MarketAnchor, ScaledClock
from core.datadir import DataDir
from core.errors import InvalidDid, InvalidOption, MemoryStoreError
from hub.messages import JobEvent
from hub.transport import BROKER_PATIENCE_S, SESSION_MAX_AGE_MS, Hub, parse_broker_url
from ledger import Charter, Keystore, Ledger, public_key_from_did, settlement
from ledger.governance import Governance
from machines.driver import Driver, SimDriver
from machines.faults import FaultyDriver
from machines.loader import find_profile, load_profile
from memory import MemoryConfig, MemoryStore
from tamc.errors import refusals

__all__ = ["NodeOptions", "parse_holders", "run_agent"]

log = logging.getLogger("tamc.agent")

SNAPSHOT_EVERY_S = 10.0
JOIN_WAIT_S = 10.0
"""How long a starting node waits for the broker to confirm its subscriptions before it says online."""
FAULTS = ("thermal_runaway", "wear_spike", "battery_drain", "incident")


class NodeOptions(BaseModel):
    """How a node in its own process runs its jobs: where it checkpoints them, its machine, its charter."""

    checkpoints: str | None = None
    """sqlite:///file.db or postgresql://…; None is ``workflows.db`` in the data dir."""
    charter: Charter | None = None
    octoprint: str | None = None
    octoprint_key: str | None = None
    inject: dict[str, tuple[float, str]] = {}
    clock_from: tuple[str, ...] = ()
    """Dids whose calls set the node's market time and pace; by default nobody's (wall time)."""

    @classmethod
    def from_cli(cls, *, checkpoints: str | None, charter: Path | None, octoprint: str | None, octoprint_key: str | None,
                 inject: list[str], clock_from: Sequence[str] = ()) -> NodeOptions:
        faults: dict[str, tuple[float, str]] = {}
        for item in inject:
            job, _, rest = item.partition("=")
            fault, _, share = rest.partition("@")
            try:
                faults[job] = (float(share or 0.5), fault)
            except ValueError:
                raise InvalidOption(f"--inject {item!r}: write JOB=FAULT@SHARE, e.g. j-1=thermal_runaway@0.3") from None
            if not job or fault not in FAULTS:
                raise InvalidOption(f"--inject {item!r}: write JOB=FAULT@SHARE with FAULT one of {', '.join(FAULTS)}")
            if not 0 <= faults[job][0] <= 1:
                raise InvalidOption(f"--inject {item!r}: SHARE is the part of the job done when it fails, from 0 to 1")
        loaded = None
        if charter is not None:
            try:
                loaded = Charter.model_validate_json(charter.read_text("utf-8"))
            except OSError as exc:
                raise InvalidOption(f"--charter {charter}: {exc}") from None
            except ValidationError as exc:
                raise InvalidOption(f"--charter {charter}: {refusals(exc, lambda loc: '.'.join(map(str, loc)))}") from None
        if octoprint and not octoprint_key:
            raise InvalidOption("--octoprint needs --octoprint-key (or TAMC_OCTOPRINT_KEY): an API key of the OctoPrint server")
        for did in clock_from:
            try:
                public_key_from_did(did)
            except InvalidDid:
                raise InvalidOption(f"--clock-from {did!r}: give the did:key of the market's requester (did:key:z6Mk…)") from None
        return cls(checkpoints=checkpoints, charter=loaded, octoprint=octoprint, octoprint_key=octoprint_key, inject=faults,
                   clock_from=tuple(clock_from))


def parse_holders(text: str) -> dict[str, int]:
    """``alice=60,bob=40`` -> {"alice": 60, "bob": 40}, or an ``InvalidOption`` saying what is wrong."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, units = part.partition("=")
        if not sep or not name.strip() or not units.strip().isdigit() or int(units) <= 0:
            raise InvalidOption(f"--holders {text!r}: holder {part!r} should look like name=units with units a positive whole number")
        out[name.strip()] = int(units)
    if not out:
        raise InvalidOption(f"--holders {text!r}: a machine needs at least one shareholder (name=units,...)")
    return out


def run_agent(machine: str, broker_url: str, *, ledger_url: str | None, holders: str, profiles: Path | None,
              data_dir: Path, model: ModelConfig | None = None, stop: threading.Event | None = None,
              memory: bool = True, memory_url: str | None = None, options: NodeOptions | None = None) -> None:
    address = parse_broker_url(broker_url)  # a bad address or holders fail here, before anything is registered
    shares = parse_holders(holders)
    model = model or ModelConfig()
    agent = MachineAgent(model) if model.uses_model else None  # a bad model setting fails here too
    if agent is not None and model.local:
        agent.runner.run(agent.prime())  # the server's prompt cache holds the bidding prefix before the first call
    profile = load_profile(machine) if machine.endswith(".toml") else find_profile(machine, profiles)
    data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_url or DataDir(data_dir).ledger_url)
    identity = Keystore(DataDir(data_dir).keys).get_or_create(profile.id)
    settlement.register_machine(ledger, profile.id, identity.did, shares)

    def show(machine_id: str, event: JobEvent) -> None:
        print(json.dumps({"machine": machine_id, "job": event.job_id, "event": event.kind,
                          "progress": event.progress, "detail": event.detail}), flush=True)

    store, memory_state = None, "off"
    if memory:
        try:
            store = MemoryStore(MemoryConfig(path=DataDir(data_dir).memory, url=memory_url)).machine(profile.id)
            memory_state = f"{store.where} ({store.count()} records)"
        except MemoryStoreError as exc:  # bid without memory, and say why
            memory_state = f"unavailable: {exc}"
            log.error("machine=%s memory unavailable: %s", profile.id, exc)
    options = options or NodeOptions()
    driver: Driver | None = None
    if options.octoprint:
        from machines.octoprint import OctoPrintDriver

        assert options.octoprint_key is not None
        driver = OctoPrintDriver(profile, options.octoprint, options.octoprint_key)
        driver.connect()
    where = options.checkpoints or str(DataDir(data_dir).workflows)
    with checkpointer(where) as saver:
        clock = _market_clock(data_dir)
        if driver is None and options.inject:  # a simulator with faults planned on purpose (``--inject``)
            driver = FaultyDriver(SimDriver(profile, clock), options.inject)
        node = MachineNode(profile, identity, Hub(broker_url, name=profile.id, clock=clock, timekeepers=options.clock_from,
                                                  session=f"machine-{profile.id}", max_age_ms=SESSION_MAX_AGE_MS), ledger=ledger, on_event=show,
                           agent=agent, governance=Governance(ledger, clock=clock), memory=store, flows=JobFlows(saver), driver=driver,
                           charter=options.charter)
        started = {"memory": memory_state, "checkpoints": where.split("@")[-1],
                   "drives": f"octoprint {options.octoprint}" if options.octoprint else "simulator"}
        _serve(node, data_dir, model, stop, {"broker": address.url, **started})  # its password stays unsaid


def _market_clock(data_dir: Path) -> ScaledClock:
    """Wall time, until the first call for proposals says the market runs faster: then its pace,
    kept in ``{data_dir}/market-clock.json`` so a restarted node keeps the market's time."""
    path = DataDir(data_dir).market_clock

    def keep(anchor: MarketAnchor) -> None:
        path.write_text(json.dumps(dataclasses.asdict(anchor)), "utf-8")

    try:
        return ScaledClock.resume(MarketAnchor(**json.loads(path.read_text("utf-8"))), on_follow=keep)
    except (OSError, ValueError, TypeError):
        return ScaledClock(1.0, start=datetime.now(UTC), on_follow=keep)


def _serve(node: MachineNode, data_dir: Path, model: ModelConfig, stop: threading.Event | None, started: dict[str, str]) -> None:
    """Run the node until ``stop`` (or SIGINT/SIGTERM), saving its snapshot for ``tamc chat``."""
    profile, agent = node.profile, node.agent
    identity = node.identity
    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start(connect_timeout_s=BROKER_PATIENCE_S)
    joined = time.monotonic() + JOIN_WAIT_S  # "online" promises that a command sent now is heard: wait for the SUBACKs
    while not node.listening() and time.monotonic() < joined:
        time.sleep(0.01)
    if not node.listening():
        log.warning("machine=%s the broker has not confirmed its subscriptions in %.0f s; reporting online anyway",
                    profile.id, JOIN_WAIT_S)
    print(json.dumps({"machine": profile.id, "did": identity.did, "state": "online",
                      "bids_by": model.label(), **started}), flush=True)
    try:
        while not stop.wait(SNAPSHOT_EVERY_S):
            save_snapshot(data_dir, node.snapshot())  # what 'tamc chat' reads
    finally:
        save_snapshot(data_dir, node.snapshot())
        node.stop()
        node.hub.close()
        if agent is not None:
            agent.close()
        print(json.dumps({"machine": profile.id, "state": "offline", "stats": {
            "bids": node.stats.bids, "done": node.stats.done, "paid": node.stats.paid, "revenue": node.stats.revenue,
            "paths": dict(node.stats.paths), "model_calls": node.stats.model_calls,
        }}), flush=True)
        sys.stdout.flush()
