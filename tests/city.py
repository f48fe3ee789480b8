"""A small market for protocol tests: the few machines a test names, a requester and observers on
the real broker and ledger. A whole day's fleet is ``market.city.City`` (``simulate``), the city
the demo, the evals and the benchmarks run; this one is built machine by machine, with the same
parts (``MachineNode``, ``Requester``, ``Hub``, ``settlement``) and the same clocks.

It runs on the virtual clock unless a test gives it a real one: ``wait``, ``settled`` and ``run``
let market time advance (as fast as the work allows) until what the test waits for has happened;
on a real clock they poll real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.node import MachineNode
from agents.requester import JobOutcome, Requester, RequesterConfig
from core.clock import Timeline
from core.virtual import VirtualClock
from hub import topics
from hub.access import Role
from hub.broker import RunningBroker
from hub.jobids import owned
from hub.messages import JobEvent
from hub.transport import Hub
from ledger import Identity, Ledger, settlement
from machines import JobSpec, load_profiles
from machines.driver import SimDriver
from machines.faults import FaultyDriver
from machines.profile import MachineProfile

PROFILES = load_profiles()
SPEED = 3600.0
BUDGET = 1_000_000_000
PRINT = dict(kind="printer_3d", capability="print", region="north", deadline_h=8, material="PLA",
             size_mm=(80, 60, 40), amount=40)  # 2 h on a Prusa


def printer(machine_id: str, margin_bps: int) -> MachineProfile:
    base = PROFILES["prusa-01"]
    return base.model_copy(update={"id": machine_id, "policy": base.policy.model_copy(update={"margin_bps": margin_bps})})


@dataclass
class SmallMarket:
    broker: RunningBroker
    ledger: Ledger
    clock: Timeline = field(default_factory=lambda: VirtualClock(speed=SPEED, watchdog_s=20.0))
    hubs: list[Hub] = field(default_factory=list)
    nodes: dict[str, MachineNode] = field(default_factory=dict)
    outcomes: list[JobOutcome] = field(default_factory=list)
    events: list[tuple[str, JobEvent]] = field(default_factory=list)
    requester: Requester | None = None
    closers: list[Callable[[], object]] = field(default_factory=list)
    """Called last on teardown (model clients, stores)."""
    wallet: str = ""

    def hub(self, name: str, *, role: Role = "requester", connect: bool = True) -> Hub:
        """A connection to the broker as ``name`` in ``role`` (a machine's user is its id)."""
        user = name if role == "machine" else f"{role}-{name}"
        hub = Hub(self.broker.admit(user, role), name=name, clock=self.clock)
        self.hubs.append(hub)
        return hub.connect() if connect else hub

    def machine(self, profile: MachineProfile, *, fail_jobs: frozenset[str] = frozenset(),
                faults: dict[str, tuple[float, str]] | None = None, wear_pct: float = 0.0, **node_options: Any) -> MachineNode:
        """A simulated machine on the city's clock; ``fail_jobs`` fail half-way, ``faults`` fire as planned."""
        identity = Identity.generate()
        settlement.register_machine(self.ledger, profile.id, identity.did, {"alice": 60, "bob": 40})
        planned = {**{job: (0.5, "fail") for job in fail_jobs}, **(faults or {})}
        driver = node_options.pop("driver", None) or FaultyDriver(SimDriver(profile, self.clock, wear_pct=wear_pct), planned)
        node = MachineNode(profile, identity, self.hub(profile.id, role="machine", connect=False), ledger=self.ledger,
                           clock=self.clock, driver=driver, **node_options).start()
        self.nodes[profile.id] = node
        if isinstance(self.clock, VirtualClock):
            self.clock.settle()  # its subscriptions take effect: a message sent next reaches it
        return node

    def open_requester(self, **config: float) -> Requester:
        """The market's requester: its wallet is ``requester:t``, so the jobs it posts as ``j-1`` go out
        as ``requester:t.j-1`` (``jid``)."""
        identity = Identity.generate()
        self.wallet = settlement.open_requester(self.ledger, "t", identity.did, BUDGET)
        cfg = RequesterConfig(**config)  # the market's own windows, unless a test says otherwise
        self.requester = Requester(identity, self.hub("requester"), self.ledger, self.wallet, config=cfg,
                                   on_outcome=self.outcomes.append).start()
        watcher = self.hub("watcher", role="auditor")
        watcher.subscribe(f"{topics.PREFIX}/jobs/+/events", lambda t, e: self.events.append((t, e.body)))  # type: ignore[arg-type]
        self.settle()  # presence and subscriptions reach the broker
        return self.requester

    def jid(self, local: str) -> str:
        """A job id as the market's requester posts it: in its wallet's namespace (``hub.jobids``)."""
        return owned(settlement.requester_account("t"), local)

    def caller(self, name: str = "caller") -> tuple[Identity, str]:
        """Someone who posts calls by hand: a key and the account (owned by it) its job ids are named in."""
        identity = Identity.generate()
        return identity, settlement.open_requester(self.ledger, name, identity.did, 0)

    def ms(self) -> int:
        """Now on the market's clock, epoch ms (what the protocol's instants are in)."""
        return self.clock.ms()

    def settle(self) -> None:
        """Let what is under way at this instant land (subscriptions, presence, messages)."""
        if isinstance(self.clock, VirtualClock):
            self.clock.settle()
        else:
            time.sleep(0.3)

    def run(self, market_s: float, stop: Callable[[], bool] | None = None, timeout: float = 20.0) -> None:
        """Let ``market_s`` seconds of market time pass (or until ``stop()``: it runs while the city
        is quiescent, so it reads state and waits for nothing)."""
        if isinstance(self.clock, VirtualClock):
            self.clock.run(self.clock.time() + market_s, stop=stop, watchdog_s=timeout)
            return
        deadline = time.monotonic() + min(market_s / self.clock.speed, timeout)
        while time.monotonic() < deadline and not (stop and stop()):
            time.sleep(0.02)

    def wait(self, n: int = 1, timeout: float = 20.0, *, within_h: float = 72.0) -> list[JobOutcome]:
        """Run until ``n`` jobs have closed (at most ``within_h`` market hours, or ``timeout`` real
        seconds on a real clock)."""
        self.run(within_h * 3600, stop=lambda: len(self.outcomes) >= n, timeout=timeout)
        assert len(self.outcomes) >= n, f"only {len(self.outcomes)} of {n} jobs closed in {within_h} market hours"
        return self.outcomes

    def settled(self, machine_id: str, timeout: float = 5.0, *, jobs: int = 1) -> None:
        node = self.nodes[machine_id]
        self.run(3600, stop=lambda: len(node.stats.settled) >= jobs, timeout=timeout)

    def close(self) -> None:
        """Stop everything in the city: nodes, requester, hubs, what the test added, the clock."""
        for node in self.nodes.values():
            node.stop()
        if self.requester:
            self.requester.stop()
        for hub in self.hubs:
            hub.close()
        for close in self.closers:
            close()
        if isinstance(self.clock, VirtualClock):
            self.clock.close()

    def kinds(self, job_id: str) -> list[tuple[str, str]]:
        return [(e.machine_id, e.kind) for _, e in self.events if e.job_id == job_id and e.kind != "progress"]


def until(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 60.0) -> Any:
    """Read until ``ok(value)`` or the timeout; the last value read (the caller asserts on it)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


def job(job_id: str, **changes: object) -> JobSpec:
    return JobSpec.model_validate({**PRINT, "id": job_id, **changes})
