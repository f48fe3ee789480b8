"""``tamc agent``: one machine node in its own process, the scale-out path (one per machine's own
computer, a shared broker, a shared ledger). It registers the machine on first start, connects
with a last will, follows the market's clock from the calls it hears, and logs each job step."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

from agents import settlement
from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.memory import MemoryConfig, MemoryStore
from agents.node import MachineNode
from agents.snapshot import save_snapshot
from core.errors import InputError, MemoryStoreError
from hub.messages import JobEvent
from hub.transport import Hub, parse_broker_url
from ledger import Keystore, Ledger
from ledger.governance import Governance
from machines.loader import find_profile, load_profile

__all__ = ["parse_holders", "run_agent"]

log = logging.getLogger("tamc.agent")

SNAPSHOT_EVERY_S = 10.0


def parse_holders(text: str) -> dict[str, int]:
    """``alice=60,bob=40`` -> {"alice": 60, "bob": 40}, or an ``InputError`` saying what is wrong."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, units = part.partition("=")
        if not sep or not name.strip() or not units.strip().isdigit() or int(units) <= 0:
            raise InputError(f"holder {part!r} should look like name=units with units a positive whole number")
        out[name.strip()] = int(units)
    if not out:
        raise InputError("a machine needs at least one shareholder (--holders name=units)")
    return out


def run_agent(machine: str, broker_url: str, *, ledger_url: str | None, holders: str, profiles: Path | None,
              data_dir: Path, model: ModelConfig | None = None, stop: threading.Event | None = None,
              memory: bool = True, memory_url: str | None = None) -> None:
    parse_broker_url(broker_url)  # a bad address fails here, before anything is registered
    model = model or ModelConfig()
    agent = MachineAgent(model) if model.uses_model else None  # a bad model setting fails here too
    profile = load_profile(machine) if machine.endswith(".toml") else find_profile(machine, profiles)
    data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_url or f"sqlite:///{(data_dir / 'ledger.db').resolve()}")
    identity = Keystore(data_dir / "keys.json").get_or_create(profile.id)
    settlement.register_machine(ledger, profile.id, identity.did, parse_holders(holders))

    def show(machine_id: str, event: JobEvent) -> None:
        print(json.dumps({"machine": machine_id, "job": event.job_id, "event": event.kind,
                          "progress": event.progress, "detail": event.detail}), flush=True)

    store, memory_state = None, "off"
    if memory:
        try:
            store = MemoryStore(MemoryConfig(path=data_dir / "memory", url=memory_url)).machine(profile.id)
            memory_state = f"{store.where} ({store.count()} records)"
        except MemoryStoreError as exc:  # bid without memory, and say why
            memory_state = f"unavailable: {exc}"
            log.error("machine=%s memory unavailable: %s", profile.id, exc)
    node = MachineNode(profile, identity, Hub(broker_url, name=profile.id), ledger=ledger, on_event=show, agent=agent,
                       governance=Governance(ledger), memory=store)
    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    print(json.dumps({"machine": profile.id, "did": identity.did, "broker": broker_url, "state": "online",
                      "bids_by": model.label(), "memory": memory_state}), flush=True)
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
