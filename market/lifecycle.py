"""The TradeNet life cycle of a city's machines: they pay their fixed costs, ask their holders for
what their books call for, and are born, moved, parked, resumed, maintained and retired by what the
holders (and the charter) decide.

Every tick of market time the life cycle
1. charges each machine its fixed costs (a parked one the charter's share); a machine that cannot
   pay for the charter's ``grace_days`` is retired by the charter itself and its salvage paid out;
2. lets each machine's steward (``agents.steward``) read its books, wear, memory and the market's
   demand per region, and open the proposals they call for;
3. has the holders vote with signed ballots: the simulated stakeholders by a seeded rule, machines
   with the shares they hold of their children, collectives through their members;
4. decides what can be decided, executes what passed (once) and applies it: the node reloads its
   standing, a child node is started, a retired one stopped, and an approved maintenance becomes a
   job the machine posts to the market, paid from its maintenance budget.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.node import MachineNode
from agents.requester import JobOutcome, Requester, RequesterConfig
from agents.steward import Books, RegionDemand, UnfilledCall, review, vote_as_holder
from core.clock import Timeline
from core.errors import GovernanceError, InsufficientFunds, LedgerError, MemoryStoreError, VoteRefused
from core.mailbox import Mailbox
from core.money import format_units
from hub import topics
from hub.envelope import Envelope
from hub.messages import CallForProposals, GovernanceNotice, JobClosed
from hub.transport import Hub
from ledger import AccountKind, Identity, Keystore, Ledger, machine_wallet, maintenance_budget, reserve, sign_ballot
from ledger.charter import Charter
from ledger.collective import Collective
from ledger.governance import Governance
from ledger.proposals import Proposal, ProposalKind
from machines.job import MAINTENANCE, JobSpec
from machines.profile import MachineProfile
from machines.regions import Region
from memory.records import MemoryItem, MemoryKind
from tools.governance import propose

__all__ = ["FIXED_COSTS", "LifeConfig", "LifeEvent", "LifeReport", "Lifecycle"]

log = logging.getLogger("tamc.lifecycle")

CLOSED = f"{topics.PREFIX}/jobs/+/award"
"""Where requesters announce how each job ended (the life cycle counts the unfilled ones)."""

FIXED_COSTS = "utility:fixed"
"""Rent, insurance and financing: where machines pay their fixed costs."""

EventKind = Literal["birth", "move", "park", "resume", "death", "retire", "maintenance", "maintained", "proposal",
                    "passed", "rejected", "failed"]


class LifeConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    tick_h: float = Field(default=0.5, gt=0)
    """Market hours between two rounds of fixed costs, votes and decisions."""
    review_every_h: float = Field(default=1.0, gt=0)
    """Market hours between two reviews of each machine's books by its steward."""
    charter: Charter = Charter(window_h=2, review_h=8, grace_days=0.5)
    """The charter the city's machines are registered with (a day in a demo holds a life)."""
    yes_bps: int = Field(default=8500, ge=0, le=10_000)
    """How often a simulated stakeholder votes yes (seeded per proposal and holder)."""


class LifeEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    at_h: float
    machine_id: str
    event: EventKind
    detail: str


class LifeReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    births: int = 0
    moves: int = 0
    parkings: int = 0
    resumes: int = 0
    deaths: int = 0
    """Retired by the charter: could not pay fixed costs for its grace period."""
    retirements: int = 0
    """Retired by a vote of its holders."""
    maintenances: int = 0
    """Maintenance jobs done for machines that hired them out."""
    proposals: dict[str, int] = Field(default_factory=dict)
    """Opened, passed, rejected, failed."""
    parents: dict[str, str] = Field(default_factory=dict)
    """Child -> the machine that spawned it."""
    events: list[LifeEvent] = Field(default_factory=list)


class Lifecycle:
    def __init__(self, *, governance: Governance, ledger: Ledger, keys: Keystore, hub: Hub, clock: Timeline,
                 nodes: list[MachineNode], spawn: Callable[[MachineProfile], MachineNode], regions: Sequence[Region],
                 holders: dict[str, Identity], collectives: Sequence[Collective] = (), config: LifeConfig | None = None,
                 requester_config: RequesterConfig | None = None, seed: int = 0, run_id: str = "") -> None:
        self.governance = governance
        self.ledger = ledger
        self.keys = keys
        self.hub = hub
        self.clock = clock
        self.nodes = nodes
        """The city's list: children are appended, the dead stay (the report lists them)."""
        self.spawn = spawn
        self.regions = {r.name: r for r in regions}
        self.holders = holders
        """Holder account -> the simulated stakeholder's key."""
        self.collectives = {c.account: c for c in collectives}
        self.config = config or LifeConfig()
        self.requester_config = requester_config or RequesterConfig()
        self.seed = seed
        self.run_id = run_id
        self.identity = keys.get_or_create("governance")
        self.events: list[LifeEvent] = []
        self.tick_ms: list[float] = []
        """How long each round took, real milliseconds (a profile figure; no decision reads it)."""
        self.mailbox = Mailbox("lifecycle", clock=clock)
        """Rounds run here, on the market's clock; what they need of a node they ask through its mailbox."""
        self._origin = clock.time()
        self._stopped = False
        self._lock = threading.Lock()
        self._calls: deque[tuple[float, CallForProposals]] = deque()
        """(hour, call) of the calls for proposals the market saw."""
        self._unfilled: set[str] = set()
        """Jobs of those calls that closed unfilled (expired or refunded)."""
        self._margin: dict[str, int] = {}
        self._books: dict[str, deque[tuple[float, int]]] = {}
        self._since: dict[str, float] = {}
        self._voted: set[tuple[str, str]] = set()
        self._seen: set[str] = set()
        self._requesters: dict[str, Requester] = {}
        self._children: dict[str, int] = {}
        self._charters: dict[str, Charter] = {}
        self._missed: dict[str, float] = {}
        self._cash: dict[str, int] = {}
        self._maintenances: dict[str, int] = {}
        self.parents: dict[str, str] = {}
        ledger.open_account(FIXED_COSTS, kind=AccountKind.SYSTEM)

    # -- running ------------------------------------------------------------------------------

    def start(self) -> Lifecycle:
        """Begin the rounds: the first one ``tick_h`` market hours from now."""
        self._origin = self.clock.time()
        self.hub.subscribe(f"{topics.PREFIX}/market/+/+/cfp", self._on_cfp)
        self.hub.subscribe(CLOSED, self._on_closed)
        for node in self.nodes:
            self._since[node.id] = 0.0
        self._schedule(1)
        return self

    def stop(self) -> None:
        self.mailbox.call(self._halt, timeout=60)
        self.mailbox.close()
        self.hub.unsubscribe(f"{topics.PREFIX}/market/+/+/cfp", self._on_cfp)
        self.hub.unsubscribe(CLOSED, self._on_closed)
        for r in self._requesters.values():
            r.stop()

    def hours(self) -> float:
        """Market hours since the rounds began."""
        return (self.clock.time() - self._origin) / 3600

    def _halt(self) -> None:
        self._stopped = True

    def _schedule(self, tick: int) -> None:
        due = self._origin + tick * self.config.tick_h * 3600
        self.mailbox.call_later(due - self.clock.time(), self._round, tick)

    def _round(self, tick: int) -> None:
        if self._stopped:
            return
        started = time.perf_counter()
        try:
            self.tick(tick)
        except Exception:  # a bug here must not stop the city's market; it is logged and counted
            log.exception("life cycle tick %d failed", tick)
        self.tick_ms.append((time.perf_counter() - started) * 1000)
        self._schedule(tick + 1)

    def _on_cfp(self, topic: str, env: Envelope) -> None:
        body = env.body
        if isinstance(body, CallForProposals) and body.job.capability != MAINTENANCE:
            with self._lock:
                self._calls.append((self.hours(), body))

    def _on_closed(self, topic: str, env: Envelope) -> None:
        body = env.body
        if isinstance(body, JobClosed) and body.outcome != "paid":
            with self._lock:
                self._unfilled.add(body.job_id)

    # -- one round ----------------------------------------------------------------------------

    def tick(self, index: int) -> None:
        now = self.hours()
        self._cash = self.ledger.balances()  # one read for every balance the round looks at
        self._charge(self._live(), index, now)
        if index % max(round(self.config.review_every_h / self.config.tick_h), 1) == 0:
            for node in self._live():
                self._review(node, now)
        self._vote()
        for p in self.governance.close_due():
            self._event(p.machine_id, p.state, f"{p.kind.value}: {p.title}")  # type: ignore[arg-type]
            if p.state == "passed":
                self._execute(p)
        for p in self.governance.proposals(state="passed"):  # a decree, or an execution cut short
            self._execute(p)

    def _live(self) -> list[MachineNode]:
        return [n for n in self.nodes if n.standing != "retired" and n.id in self._since]

    def _charter(self, machine_id: str) -> Charter:
        if machine_id not in self._charters:  # a charter is set once, at registration
            self._charters[machine_id] = self.governance.charter(machine_id)
        return self._charters[machine_id]

    def _charge(self, nodes: list[MachineNode], index: int, now: float) -> None:
        """Fixed costs for the tick, all machines that can pay in one posting (one write, not one
        per machine, beside the market's own); the margin of the jobs settled since goes on the books."""
        due = {}
        for node in nodes:
            share = self._charter(node.id).park_fixed_bps if node.standing == "parked" else 10_000
            due[node.id] = round(node.profile.fixed_daily_cost * share * self.config.tick_h / (24 * 10_000))
        payers = [m for m, amount in due.items() if amount and self._balance(machine_wallet(m)) >= amount]
        if payers:
            moves = [(machine_wallet(m), FIXED_COSTS, due[m]) for m in payers]
            try:
                self.ledger.transfers(moves, key=f"fixed:{self.run_id}:{index}", memo=f"fixed costs, {self.config.tick_h:g} h")
            except InsufficientFunds:  # a wallet spent between the read and the write: each on its own
                for mv in moves:
                    try:
                        self.ledger.transfer(*mv, key=f"fixed:{self.run_id}:{index}:{mv[0]}", memo="fixed costs")
                    except InsufficientFunds:
                        payers.remove(mv[0].removeprefix("machine:"))
        for node in nodes:
            m = node.id
            paid = m in payers or not due[m]
            missed = self._missed.get(m, 0.0)
            if not paid or missed:  # a write only when the count changes
                missed = self.governance.fixed_costs(m, paid=paid, hours=self.config.tick_h).missed_h
                self._missed[m] = missed
            margin = node.margin()
            earned = margin - self._margin.get(m, 0)
            self._margin[m] = margin
            self._books.setdefault(m, deque()).append((now, earned - (due[m] if paid else 0)))
            charter = self._charter(m)
            if missed >= charter.grace_days * 24:
                self._die(node, charter, missed)

    def _die(self, node: MachineNode, charter: Charter, missed_h: float) -> None:
        """The charter retires a machine that cannot pay its way: it leaves the market, is sold, and
        its holders get the salvage and whatever its accounts hold."""
        telemetry = node.telemetry()
        wear = telemetry.wear_pct if telemetry else 0.0
        node.retire()
        salvage = round(node.profile.purchase_price * charter.salvage_bps * max(0.0, 1 - wear / 100) / 10_000)
        why = f"could not pay its fixed costs for {missed_h:.1f} h (grace {charter.grace_days * 24:g} h)"
        p = self.governance.open(node.id, ProposalKind.RETIRE, f"{node.id} retired: {why}", key=f"{self.run_id}:death:{node.id}",
                                 opened_by="charter", payload={"salvage": salvage, "rationale": why}, decided=True,
                                 evidence=(f"wallet {format_units(self._balance(machine_wallet(node.id)))}",
                                           f"salvage {format_units(salvage)} at wear {wear:.1f}%"))
        self._event(node.id, "death", why)
        self._execute(p)

    def _review(self, node: MachineNode, now: float) -> None:
        m = node.id
        standing = self.governance.standing(m)
        charter = self._charter(m)
        since = self._since.get(m, 0.0)
        window = [(h, v) for h, v in self._books.get(m, ()) if h > now - charter.review_h]
        telemetry = node.telemetry()
        books = Books(
            wear_pct=telemetry.wear_pct if telemetry else 0.0, wallet=self._balance(machine_wallet(m)),
            reserve=self._balance(reserve(m)), net=sum(v for _, v in window), observed_h=min(now - since, charter.review_h),
            in_hand=node.work_in_hand(),
            children=self._children.get(m, 0), maintenance_pending=self._balance(maintenance_budget(m)) > 0 or node.maintenance_due)
        demand = self._demand(node.profile.kind.value, now, charter.review_h)
        drafts = review(node.profile, standing, charter, books, demand, period=int(now // charter.review_h), since_h=since)
        if any(d.kind in (ProposalKind.RELOCATE, ProposalKind.PARK, ProposalKind.SPAWN) for d in drafts):
            # only now read what memory says of demand, for the evidence: a vector store read on
            # every review would compete with the bids' own recalls
            books = books.model_copy(update={"memory_demand": self._memory_demand(node)})
            drafts = review(node.profile, standing, charter, books, demand, period=int(now // charter.review_h), since_h=since)
        if not drafts:
            return
        open_kinds = {p.kind for p in self.governance.proposals(m, state="open")}
        for d in drafts:
            if d.kind in open_kinds:
                continue
            payload = dict(d.payload)
            if d.kind is ProposalKind.SPAWN:
                payload["child_did"] = self.keys.get_or_create(payload["child_id"]).did
            try:
                p = propose(node.deps(actor=machine_wallet(m)), d.kind, d.title, d.rationale, payload=payload,
                            evidence=d.evidence, key=f"{self.run_id}:{d.key}")
            except (GovernanceError, LedgerError) as exc:
                log.warning("machine=%s could not open %s: %s", m, d.kind.value, exc)
                continue
            if p.id not in self._seen:
                self._seen.add(p.id)
                self._event(m, "proposal", f"{d.kind.value}: {d.title}")

    def _demand(self, kind: str, now: float, hours: float) -> dict[str, RegionDemand]:
        """Calls of ``kind`` per region over the last ``hours``, the machines serving it, and the calls
        that closed unfilled."""
        with self._lock:
            while self._calls and self._calls[0][0] < now - max(hours, 24.0):
                _, gone = self._calls.popleft()
                self._unfilled.discard(gone.job.id)
            calls = [(h, c) for h, c in self._calls if h > now - hours and c.job.kind.value == kind]
            unfilled = [UnfilledCall(job=c.job, reserve=c.reserve, hour=h) for h, c in calls if c.job.id in self._unfilled]
        out = {}
        for region in self.regions:
            machines = sum(1 for n in self._live() if n.standing == "active" and n.profile.kind.value == kind
                           and region in n.profile.territory)
            out[region] = RegionDemand(calls=sum(1 for _, c in calls if c.job.region == region), machines=machines,
                                       unfilled=tuple(u for u in unfilled if u.job.region == region))
        return out

    def _memory_demand(self, node: MachineNode) -> dict[str, str]:
        """What the machine's own memory says of demand in the regions it served (the last day of records)."""
        if node.memory is None:
            return {}
        out = {}
        for region in self.regions:
            try:
                records = node.memory.recent(kind="demand", region=region, limit=24)
            except MemoryStoreError:
                return {}
            if records:
                calls = sum(int(r.metadata.get("calls", 0)) for r in records)
                wins = sum(int(r.metadata.get("wins", 0)) for r in records)
                out[region] = f"{calls} calls seen in {len(records)} hours, won {wins}"
        return out

    # -- votes --------------------------------------------------------------------------------

    def _vote(self) -> None:
        nodes = {machine_wallet(n.id): n for n in self.nodes if n.standing != "retired"}
        for p in self.governance.proposals(state="open"):
            for holder in p.weights:
                if (p.id, holder) in self._voted:
                    continue
                if holder in self.holders:
                    ballot = sign_ballot(self.holders[holder], p.id, holder, self._choice(p, holder))
                elif holder in nodes:
                    parent = nodes[holder]
                    choice = vote_as_holder(p, principals=frozenset(self.ledger.cap_table(parent.id)), payees=parent.profile.policy.payees,
                                            mandate=self.governance.charter(parent.id).vote_mandate)
                    ballot = sign_ballot(parent.identity, p.id, holder, choice)
                elif holder in self.collectives:
                    self.collectives[holder].ask(p)
                    self._voted.add((p.id, holder))
                    continue
                else:
                    continue  # a holder nobody here votes for
                self._voted.add((p.id, holder))
                try:
                    self.governance.vote(ballot)
                except VoteRefused as exc:
                    log.info("vote of %s on %s refused: %s", holder, p.id, exc)
        for collective in self.collectives.values():
            for inner in self.governance.proposals(collective.account):
                if inner.kind is ProposalKind.DELEGATE and (inner.id, "cast") not in self._voted and collective.cast(inner):
                    self._voted.add((inner.id, "cast"))

    def _choice(self, p: Proposal, holder: str) -> Literal["yes", "no"]:
        """A simulated stakeholder's vote, seeded by the proposal and when it was opened: asked again
        later, they may answer otherwise (seeded by the title alone, a rejected resume was rejected
        every period, and a workshop stayed parked all day while its calls went unanswered)."""
        digest = hashlib.sha256(f"{self.seed}/{p.title}/{p.opened_at.isoformat()}/{holder}".encode()).digest()
        return "yes" if int.from_bytes(digest[:4], "big") % 10_000 < self.config.yes_bps else "no"

    # -- execution ----------------------------------------------------------------------------

    def _execute(self, p: Proposal) -> None:
        try:
            done = self.governance.execute(p.id, actor="lifecycle")
        except GovernanceError as exc:
            self._event(p.machine_id, "failed", str(exc))
            return
        if done.replayed:
            return
        self.hub.send(topics.governance(p.machine_id), GovernanceNotice(
            machine_id=p.machine_id, proposal_id=p.id, kind=p.kind.value, state="executed"), self.identity)
        node = next((n for n in self.nodes if n.id == p.machine_id), None)
        if node is None or p.kind is ProposalKind.DELEGATE:
            return
        if p.kind is not ProposalKind.RETIRE:
            node.reload_standing()
        now = self.hours()
        if p.kind is ProposalKind.SPAWN:
            self._children[node.id] = self._children.get(node.id, 0) + 1
            child = self.spawn(self._child_profile(node, p.payload["child_id"], p.payload["region"]))
            self.parents[child.id] = node.id
            self._since[child.id] = now
            self._event(child.id, "birth", f"child of {node.id} in {p.payload['region']}, "
                                            f"funded with {format_units(p.payload['capital'])}")
        elif p.kind is ProposalKind.RELOCATE:
            self._since[node.id] = now
            self._event(node.id, "move", f"to {p.payload['region']} for {format_units(p.payload.get('cost', 0))}")
        elif p.kind is ProposalKind.PARK:
            self._since[node.id] = now
            self._event(node.id, "park", p.title)
        elif p.kind is ProposalKind.RESUME:
            self._since[node.id] = now
            self._event(node.id, "resume", p.title)
        elif p.kind is ProposalKind.RETIRE:
            if node.standing != "retired" and p.opened_by != "charter":
                self._event(node.id, "retire", p.title)
            node.retire()
        elif p.kind is ProposalKind.MAINTENANCE:
            self._hire_maintenance(node, p)

    def _child_profile(self, parent: MachineNode, child_id: str, region: str) -> MachineProfile:
        base = parent.mandate.base
        update: dict[str, object] = {
            "id": child_id, "name": f"{base.name.split(',')[0]}, {region} (child of {parent.id})", "region": region,
            "policy": base.policy.model_copy(update={"territory": base.policy.territory if base.vehicle else (region,)}),
        }
        if base.vehicle is not None and region in self.regions:
            update["vehicle"] = base.vehicle.model_copy(update={"home": self.regions[region].center})
        return base.model_copy(update=update)

    def _hire_maintenance(self, node: MachineNode, p: Proposal) -> None:
        """The machine is a requester too: it posts its maintenance to the market, paid from the budget."""
        budget = self._balance_now(maintenance_budget(node.id))
        telemetry = node.telemetry()
        wear = max(telemetry.wear_pct if telemetry else 0.0, 0.01)
        self._maintenances[node.id] = self._maintenances.get(node.id, 0) + 1  # ids by count, not by chance: a seed replays them
        job = JobSpec(id=f"maint-{self.run_id}-{node.id}-{self._maintenances[node.id]}", kind=node.profile.kind, capability=MAINTENANCE, region=node.profile.region,
                      deadline_h=24, max_price=budget, service_of=node.id, amount=round(wear, 2),
                      description=f"restore {node.id} ({node.profile.name}) from {wear:.1f}% wear")
        requester = self._requesters.get(node.id)
        if requester is None:
            requester = Requester(node.identity, self.hub, self.ledger, maintenance_budget(node.id), config=self.requester_config,
                                  on_outcome=functools.partial(self._closed_maintenance, node),
                                  owner=machine_wallet(node.id)).start()  # its job ids are the machine's (its key owns that wallet)
            self._requesters[node.id] = requester
        job_id = requester.post(job, reserve=budget)
        self._event(node.id, "maintenance", f"job {job_id} posted, budget {format_units(budget)}")

    def _closed_maintenance(self, node: MachineNode, outcome: JobOutcome) -> None:
        self.mailbox.post(self._maintenance_closed, node, outcome)  # from the requester's thread to ours

    def _maintenance_closed(self, node: MachineNode, outcome: JobOutcome) -> None:
        left = self._balance_now(maintenance_budget(node.id))
        if outcome.outcome == "paid":
            telemetry = node.telemetry()
            node.maintained()
            said = f"by {outcome.machine_id} for {format_units(outcome.price or 0)}; {format_units(left)} of the budget back to the wallet"
            self._event(node.id, "maintained", said)
            if node.memory is not None:  # the machine remembers what was done to it, and by whom
                wear = telemetry.wear_pct if telemetry else 0.0
                node.memory.remember_later([MemoryItem(
                    f"maintenance done ({outcome.job_id}) {said}; wear {wear:.1f}% restored to 0%", MemoryKind.MAINTENANCE, "market",
                    {"job_id": outcome.job_id, "technician": outcome.machine_id or "", "price": outcome.price or 0,
                     "wear_before": round(wear, 3)}, self.clock.now())])
        if left:
            self.ledger.transfer(maintenance_budget(node.id), machine_wallet(node.id), left,
                                 key=f"maintenance-left:{outcome.job_id}", memo=f"unspent budget of {outcome.job_id}")

    # -- report -------------------------------------------------------------------------------

    def _event(self, machine_id: str, event: EventKind, detail: str) -> None:
        e = LifeEvent(at_h=round(self.hours(), 3), machine_id=machine_id, event=event, detail=detail)
        with self._lock:
            self.events.append(e)
        log.info("life machine=%s event=%s at_h=%.2f detail=%s", machine_id, event, e.at_h, detail)

    def report(self) -> LifeReport:
        with self._lock:
            events = list(self.events)
        count = {k: sum(1 for e in events if e.event == k) for k in ("birth", "move", "park", "resume", "death", "retire",
                                                                       "maintained", "proposal", "passed", "rejected", "failed")}
        return LifeReport(births=count["birth"], moves=count["move"], parkings=count["park"], resumes=count["resume"],
                          deaths=count["death"], retirements=count["retire"], maintenances=count["maintained"],
                          proposals={k: count[k] for k in ("proposal", "passed", "rejected", "failed")},
                          parents=dict(self.parents), events=events)

    def _balance(self, account: str) -> int:
        """A balance as of this round's start (the life cycle's own moves are after the read)."""
        return self._cash.get(account, 0)

    def _balance_now(self, account: str) -> int:
        try:
            return self.ledger.balance(account)
        except LedgerError:
            return 0
