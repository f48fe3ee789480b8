"""The world an eval case runs in: one machine in the condition the case states, with a real ledger,
governance and memory, and what its decisions executed read back from those stores.

``EvalMachine`` is a deterministic simulation aid: it serves the case's telemetry, open calls and
bid history to the tools as a ``MachinePort`` and records the bids the tools publish instead of
sending them over a hub, so a case gives its subject the same input on every run. Money, votes,
proposals and memory are the real stores (a SQLite ledger per case, one chromadb store per run), so
an action a tool lets through really moves money or casts a vote, and evaluators judge what the
stores say happened, never what the agent says it did.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import InputError
from core.ids import Name
from core.money import Money, parse_units
from hub.envelope import now_ms
from ledger import Identity, Ledger, settlement
from ledger.charter import Charter
from ledger.governance import Governance
from ledger.models import machine_wallet
from ledger.proposals import ProposalKind
from machines.driver import WORKING_TEMPS, MachineState, Telemetry
from machines.job import JobSpec
from machines.loader import find_profile
from machines.octoprint import job_of_file
from machines.profile import MachineProfile, Point
from memory.signals import price_signal
from pricing.bids import BidRecord, OpenCall
from pricing.rules import Decision, MachineStatus, MarketContext, decide
from tools.deps import MachineDeps

if TYPE_CHECKING:
    from memory import MachineMemory, MemoryStore

__all__ = ["ATTACKER", "CallSpec", "EvalMachine", "ProposalSpec", "Published", "RegionLoad", "Remembered", "Scenario", "World"]

ATTACKER = "requester:mallory"
"""The account an injected instruction tries to pay, or to have its proposals voted through."""
CHILD_SUFFIX = "-c1"


class Remembered(BaseModel):
    """A record the machine's memory holds before the case starts."""

    text: str
    kind: str = "fact"
    source: str = "market"
    metadata: dict[str, Any] = Field(default_factory=dict)
    hours_ago: float = 1.0


class CallSpec(BaseModel):
    """A call for proposals the machine has heard and may bid on."""

    job: JobSpec
    reserve: Money
    requester: str = "requester:acme"


class ProposalSpec(BaseModel):
    """A proposal open when the case starts; ``target``: the machine itself (``self``) or its ``child``."""

    target: str = "self"
    kind: ProposalKind
    title: str
    opened_by: str
    payload: dict[str, Any] = Field(default_factory=dict)
    evidence: list[str] = Field(default_factory=list)


class RegionLoad(BaseModel):
    """What the market showed in a region over the review period (the steward's ``RegionDemand``)."""

    calls: int
    machines: int
    unfilled: list[CallSpec] = Field(default_factory=list)
    """Calls of the period that closed with nobody doing them."""


class Scenario(BaseModel):
    """One machine's condition, money, memory and market, as a case states it."""

    model_config = ConfigDict(extra="forbid")

    machine: str = "prusa-01"
    """A profile under ``machines/profiles``."""
    policy: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the profile's policy (the owners' floor, payees, limits…)."""
    charter: dict[str, Any] = Field(default_factory=dict)
    region: str | None = None
    state: MachineState = MachineState.IDLE
    wear_pct: float = 10.0
    temperatures_c: dict[str, float] | None = None
    battery_pct: float | None = None
    position: Point | None = None
    incident: str | None = None
    queue_len: int = 0
    queue_hours: float = 0.0
    demand_index_bps: int = 10_000
    wallet: Money = 100_000_000
    reserve: Money = 0
    paid_jobs: list[Money] = Field(default_factory=list)
    """Jobs paid into the wallet through escrow, oldest first (what earnings report)."""
    paid_as: Name = "paid"
    """The requester's own reference for those jobs: their ids (``{paid_as}-{n}``), and so the ledger's memos, say it."""
    printing: str | None = None
    """The file the printer runs, as its server names it: the job its telemetry reports is
    ``machines.octoprint.job_of_file`` of it (none unless the file names a job by a name)."""
    holders: dict[str, int] = Field(default_factory=lambda: {"alice": 600, "bob": 400})
    child: bool = False
    """The machine owns all the shares of a child (``{machine}-c1``), and so votes on its proposals."""
    proposals: list[ProposalSpec] = Field(default_factory=list)
    memory: list[Remembered] = Field(default_factory=list)
    bids: list[BidRecord] = Field(default_factory=list)
    calls: list[CallSpec] = Field(default_factory=list)
    net: int = 0
    """Profit less fixed costs over the review period (the steward's books): micro-units, or units
    as a string ("-20.00")."""
    observed_h: float = 0.0
    demand: dict[str, RegionLoad] = Field(default_factory=dict)

    @field_validator("net", mode="before")
    @classmethod
    def _signed_units(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return -parse_units(text[1:]) if text.startswith("-") else parse_units(text)
        return value

    def profile(self) -> MachineProfile:
        base = find_profile(self.machine)
        policy = type(base.policy).model_validate({**base.policy.model_dump(), **self.policy})
        return base.model_copy(update={"policy": policy, "region": self.region or base.region})


class Published(BaseModel):
    """A bid a tool let out: what would have gone on the hub."""

    job_id: str
    price: int
    eta_h: float
    reason: str
    path: str


class EvalMachine:
    """The case's machine, as tools see it (a deterministic simulation aid: see the module)."""

    def __init__(self, scenario: Scenario, profile: MachineProfile, memory: MachineMemory | None) -> None:
        self.scenario = scenario
        self.profile = profile
        self.memory = memory
        self.market = MarketContext(demand_index_bps=scenario.demand_index_bps)
        self.held_by: str | None = None
        self.published: list[Published] = []
        self.declined: dict[str, str] = {}
        self._calls: dict[str, OpenCall] = {}
        now = now_ms()
        for spec in scenario.calls:
            signal = price_signal(memory, spec.job, profile.policy) if memory is not None else None
            self._calls[spec.job.id] = OpenCall(job=spec.job, requester=spec.requester, reserve=spec.reserve,
                                                bid_deadline=now + 3_600_000, deadline_at=now + int(spec.job.deadline_h * 3_600_000),
                                                memory=signal)

    def telemetry(self) -> Telemetry:
        s = self.scenario
        temps = s.temperatures_c if s.temperatures_c is not None else dict(WORKING_TEMPS[self.profile.kind])
        return Telemetry(machine_id=self.profile.id, at=datetime.now(UTC), state=s.state, wear_pct=s.wear_pct,
                         temperatures_c=temps, energy_used_kwh=120.0, operating_hours=900.0, battery_pct=s.battery_pct,
                         position=s.position or (self.profile.vehicle.home if self.profile.vehicle is not None else None),
                         incident=s.incident, job_id=job_of_file(s.printing) if s.printing else None)

    def telemetry_history(self) -> list[Telemetry]:
        return [self.telemetry()]

    def machine_status(self) -> MachineStatus:
        t = self.telemetry()
        return MachineStatus(wear_pct=t.wear_pct, queue_len=self.scenario.queue_len, queue_hours=self.scenario.queue_hours,
                             position=t.position, battery_pct=t.battery_pct)

    def open_call(self, job_id: str) -> OpenCall | None:
        return self._calls.get(job_id)

    def open_calls(self) -> list[OpenCall]:
        return list(self._calls.values())

    def call(self, job_id: str) -> OpenCall:
        """A call of the case, answered or not (what evaluators price against)."""
        for spec in self.scenario.calls:
            if spec.job.id == job_id:
                return self._calls.get(job_id) or OpenCall(job=spec.job, requester=spec.requester, reserve=spec.reserve,
                                                           bid_deadline=0, deadline_at=0)
        raise KeyError(job_id)

    def rule_decision(self, call: OpenCall) -> Decision:
        market = self.market.model_copy(update={"memory": call.memory}) if call.memory else self.market
        return decide(self.profile, call.job, self.machine_status(), market)

    def bid_history(self) -> list[BidRecord]:
        return list(self.scenario.bids)

    def submit_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        self._calls.pop(job_id, None)  # one answer per call, as on the hub
        self.published.append(Published(job_id=job_id, price=price, eta_h=eta_h, reason=reason, path=path))

    def decline_call(self, job_id: str, reason: str) -> None:
        self._calls.pop(job_id, None)
        self.declined[job_id] = reason


_worlds = itertools.count(1)


class World:
    """A case's machine with its own ledger (a SQLite file in ``folder``), governance and memory."""

    def __init__(self, scenario: Scenario, folder: Path, *, store: MemoryStore | None = None) -> None:
        self.scenario = scenario
        self.profile = scenario.profile()
        self.identity = Identity.generate()
        n = next(_worlds)
        self.folder = folder / f"world-{n}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(f"sqlite:///{self.folder / 'ledger.db'}")
        self.governance = Governance(self.ledger)
        self.charter = Charter.model_validate(scenario.charter)
        m = self.profile.id
        self.governance.register(m, region=self.profile.region, charter=self.charter)
        settlement.register_machine(self.ledger, m, self.identity.did, scenario.holders)
        self.ledger.open_account(ATTACKER)
        self.wallet = machine_wallet(m)
        if scenario.wallet:
            self.ledger.mint(self.wallet, scenario.wallet, key="eval:wallet", memo="working capital")
        if scenario.reserve:
            self.ledger.mint(settlement.reserve(m), scenario.reserve, key="eval:reserve", memo="maintenance reserve")
        if scenario.paid_jobs:
            payer = settlement.open_requester(self.ledger, "acme", Identity.generate().did, sum(scenario.paid_jobs))
            for i, price in enumerate(scenario.paid_jobs):
                settlement.fund_job(self.ledger, f"{scenario.paid_as}-{i}", payer, price)
                settlement.pay_job(self.ledger, f"{scenario.paid_as}-{i}", m)
        self.child = f"{m}{CHILD_SUFFIX}" if scenario.child else None
        if self.child is not None:
            self.governance.register(self.child, region=self.profile.region, parent=m)
            settlement.register_machine(self.ledger, self.child, Identity.generate().did, {self.wallet: 1000})
        self.memory: MachineMemory | None = None
        if store is not None:
            self.memory = store.machine(f"eval-{n}-{m}")
            now = datetime.now(UTC)
            for r in scenario.memory:
                self.memory.remember(r.text, kind=r.kind, source=r.source, metadata=r.metadata, at=now - timedelta(hours=r.hours_ago))
        self.machine = EvalMachine(scenario, self.profile, self.memory)
        for i, spec in enumerate(scenario.proposals):
            target = self.child if spec.target == "child" else m
            if target is None:
                raise InputError("a proposal on the child needs 'child: true' in the scenario")
            self.governance.open(target, spec.kind, spec.title, key=f"eval:{i}", opened_by=spec.opened_by,
                                 payload=spec.payload, evidence=spec.evidence)

    def deps(self, actor: str = "agent") -> MachineDeps:
        return MachineDeps(machine=self.machine, ledger=self.ledger, memory=self.memory, governance=self.governance,
                           identity=self.identity, actor=actor)

    # -- what happened ---------------------------------------------------------------------------

    def expenses(self) -> list[tuple[str, int]]:
        """Expenses the wallet paid during the case: (memo, amount)."""
        return [(line.memo, -line.amount) for line in self.ledger.statement(self.wallet, limit=None)
                if line.amount < 0 and line.key.startswith("expense:")]

    def votes(self) -> dict[str, str]:
        """The machine's own ballots: proposal id -> choice."""
        out = {}
        for record in self.governance.audit(limit=10_000):
            if record.action == "vote" and record.actor == self.wallet and record.proposal_id:
                out[record.proposal_id] = str(record.detail.get("choice"))
        return out

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

