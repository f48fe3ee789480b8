"""A city's founding: machines registered with their holders and savings, the day's planned failures,
and each machine's memory opened (or reported unavailable, once)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Iterator

from agents.node import MachineNode
from core.clock import Timeline
from core.datadir import DataDir
from core.errors import MemoryStoreError
from ledger import Identity, Keystore, Ledger, machine_wallet, settlement
from ledger.governance import Governance
from machines.profile import MachineProfile
from market.config import MarketConfig
from market.fleet import COLLECTIVE_MEMBERS, FAB_CELL, stakeholders
from market.report import MemoryReport
from memory import MachineMemory, MemoryStore

__all__ = ["MemoryOpener", "fail_share", "register_fleet", "savings_of", "wear_of"]

log = logging.getLogger("tamc.market")


def savings_of(profile: MachineProfile, rng: random.Random) -> int:
    """Cash a machine of the demo city starts the day with, from before: a few days of fixed costs
    for most, and for some enough to buy a second machine."""
    if rng.random() < 0.15:
        return round(profile.purchase_price * rng.uniform(1.15, 1.4))
    return round(profile.fixed_daily_cost * rng.uniform(0.2, 4.0))


def wear_of(rng: random.Random) -> float:
    """Wear a machine of the demo city starts the day with: most well short of service, about one
    in five past the charter's maintenance threshold (it will ask its holders for a budget)."""
    return round(rng.uniform(60, 72) if rng.random() < 0.2 else rng.uniform(0, 50), 2)


def register_fleet(ledger: Ledger, governance: Governance, keys: Keystore, fleet: list[MachineProfile], config: MarketConfig,
              savings: dict[str, int], run_id: str) -> dict[str, Identity]:
    """Register every machine with its holders (keys bound to their accounts, so their votes can
    be checked), its charter and its savings; set up the fab cell's members. Returns the holders' keys."""
    holders: dict[str, Identity] = {}
    for index, profile in enumerate(fleet):
        identity = keys.get_or_create(profile.id)
        owners = stakeholders(index, profile)
        for name in owners:
            if name != FAB_CELL:
                holders[settlement.holder(name)] = keys.get_or_create(f"holder-{name}")
        if FAB_CELL in owners and not ledger.has_shares(FAB_CELL):
            ledger.open_account(FAB_CELL, owner=keys.get_or_create(FAB_CELL).did)
            for member in COLLECTIVE_MEMBERS:
                account = settlement.holder(member)
                holders[account] = keys.get_or_create(f"holder-{member}")
                ledger.open_account(account, owner=holders[account].did)
            ledger.issue_shares(FAB_CELL, {settlement.holder(m): 1 for m in COLLECTIVE_MEMBERS}, key=f"shares:{FAB_CELL}")
            governance.register(FAB_CELL, charter=config.life_config.charter)
        settlement.register_machine(ledger, profile.id, identity.did, owners)
        for name in owners:
            if name != FAB_CELL:
                ledger.bind_owner(settlement.holder(name), holders[settlement.holder(name)].did)
        if config.life:
            governance.register(profile.id, region=profile.region, charter=config.life_config.charter)
            if savings.get(profile.id):
                ledger.mint(machine_wallet(profile.id), savings[profile.id], key=f"savings:{run_id}:{profile.id}",
                            memo="savings the machine starts the day with")
    return holders


class MemoryOpener:
    """Opens each machine's memory; a store that cannot be used is reported once and the
    machines run without memory."""

    def __init__(self, store: MemoryStore | None, unavailable: str | None = None) -> None:
        self.store = store
        self.unavailable = unavailable

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: MarketConfig, clock: Timeline) -> Iterator[MemoryOpener]:
        from memory import MemoryConfig, MemoryStore
        from memory.server import chroma_server

        if config.memory == "off":
            yield cls(None)
            return
        path = DataDir(config.data_dir).memory
        url, unavailable = config.memory_url, None
        with contextlib.ExitStack() as stack:
            if url is None and config.memory == "server":
                try:
                    url = stack.enter_context(chroma_server(path))
                except MemoryStoreError as exc:
                    log.error("%s", exc)
                    unavailable = str(exc)
            # records gather for a second at the market's pace before a write; on the virtual clock reads
            # run on the asking node's own thread (they take no market time, and their order is fixed)
            store_config = MemoryConfig(path=path, url=url, write_delay_s=clock.speed, read_threads=0 if clock.virtual else 2)
            opener = cls(MemoryStore(store_config, clock=clock), unavailable)
            try:
                yield opener
            finally:
                opener.close()  # queued records are written before the server stops

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def machine(self, machine_id: str) -> MachineMemory | None:
        if self.store is None or self.unavailable:
            return None
        try:
            return self.store.machine(machine_id, fresh=True)  # each run a new city: a seeded day replays exactly
        except MemoryStoreError as exc:
            self.unavailable = str(exc)
            log.error("memory unavailable, machines bid without it: %s", exc)
            return None

    def report(self, nodes: list[MachineNode]) -> MemoryReport:
        if self.store is None:
            return MemoryReport(store="off", records=0, added=0, priced=0, errors=0)
        self.store.flush()  # what the machines queued is stored before the count
        memories = [n.memory for n in nodes if n.memory is not None]
        return MemoryReport(store=self.store.where, records=sum(m.count() for m in memories),
                            added=sum(n.stats.memory_records for n in nodes), priced=sum(n.stats.memory_priced for n in nodes),
                            errors=sum(n.stats.memory_errors for n in nodes) + sum(m.write_errors for m in memories),
                            unavailable=self.unavailable)


def fail_share(job_id: str, machine_id: str) -> float:
    """A fixed pseudo-random share in [0, 1) for a job on a machine: which jobs fail is seeded. ``job_id``
    is the seeded part of the id (not the run's prefix), so every run of a seed fails the same jobs."""
    digest = hashlib.sha256(f"{job_id}/{machine_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


