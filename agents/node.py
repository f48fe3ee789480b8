"""A machine node: the machine's side of the contract net, on its own mailbox thread.

It hears calls for proposals for its kind in its territory, prices them with the rule engine
(the LLM agent plugs in at ``decide`` in its own issue), bids or stays silent, accepts an award
only if it can still keep the deadline, waits for escrow, runs the job on its driver with progress
events, and when paid settles its costs and pays its shareholders. Every step checks who sent the
message: awards and payments only count from the requester that posted the job.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agents import settlement
from agents.rules import CostBreakdown, Decision, MachineStatus, MarketContext, Rule, decide, job_cost
from core.clock import ScaledClock
from core.errors import EscrowNotFound
from hub import topics
from hub.envelope import Envelope, now_ms, seal
from hub.mailbox import Mailbox, Timer
from hub.messages import Award, Bid, Body, CallForProposals, EventKind, JobClosed, JobEvent, Presence, TelemetryReport
from hub.transport import Hub
from ledger import Identity, Ledger
from machines.driver import SimDriver
from machines.job import JobSpec
from machines.profile import MachineProfile, Point
from machines.work import estimate

__all__ = ["Contract", "MachineNode", "NodeStats"]

log = logging.getLogger("tamc.node")

ContractState = Literal["accepted", "funded", "running", "done", "paid", "failed", "withdrawn", "cancelled"]
ACTIVE = ("accepted", "funded", "running")
FORGET_AFTER_S = 60.0
FUND_WAIT_S = 10.0
"""Real seconds after accepting that a machine keeps the slot for a requester that has not funded."""


def _hours_left(deadline_at: int, speed: float) -> float:
    return (deadline_at - now_ms()) / 1000 * speed / 3600


@dataclass
class Contract:
    job: JobSpec
    requester: str
    price: int
    speed: float
    deadline_at: int
    accept_by: int
    state: ContractState = "accepted"
    hours: float = 0.0
    cost: CostBreakdown | None = None
    timers: list[Timer] = field(default_factory=list)

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()


@dataclass
class Followed:
    """A job this machine bid on, followed on its award topic until the requester closes it (a
    machine that lost, or dropped out, may still be asked to take it over)."""

    cfp: CallForProposals
    requester: str
    contract: Contract | None = None


@dataclass
class NodeStats:
    cfps: int = 0
    bids: int = 0
    declined_cfps: int = 0
    declines: Counter[str] = field(default_factory=Counter)
    """Rule codes that made the machine stay silent, e.g. ``decline.queue``."""
    awards: int = 0
    accepted: int = 0
    done: int = 0
    failed: int = 0
    paid: int = 0
    busy_hours: float = 0.0
    revenue: int = 0
    energy: int = 0
    wear_cost: int = 0
    consumables: int = 0
    to_owners: int = 0
    settled: list[tuple[str, settlement.JobCosts]] = field(default_factory=list)

    @property
    def costs(self) -> int:
        return self.energy + self.wear_cost + self.consumables


class MachineNode:
    def __init__(
        self,
        profile: MachineProfile,
        identity: Identity,
        hub: Hub,
        *,
        ledger: Ledger | None = None,
        mailbox: Mailbox | None = None,
        clock: ScaledClock | None = None,
        market: MarketContext | None = None,
        fail_jobs: frozenset[str] = frozenset(),
        progress_steps: int = 4,
        on_event: Callable[[str, JobEvent], None] | None = None,
    ) -> None:
        self.profile = profile
        self.id = profile.id
        self.identity = identity
        self.hub = hub
        self.ledger = ledger
        self.mailbox = mailbox or Mailbox(f"node-{profile.id}")
        self._own_mailbox = mailbox is None
        self.clock = clock
        self.market = market or MarketContext()
        self.fail_jobs = fail_jobs
        self.progress_steps = progress_steps
        self.on_event = on_event
        self.session = uuid.uuid4().hex
        self.stats = NodeStats()
        self.driver: SimDriver | None = SimDriver(profile, clock) if clock else None
        self._jobs: dict[str, Followed] = {}
        self._running: Contract | None = None
        self._cfp_topics = [topics.cfp(region, profile.kind.value) for region in profile.territory]

    # -- life --------------------------------------------------------------------------------

    def presence(self, state: Literal["online", "offline"]) -> bytes:
        """The signed presence notice; the offline one is what the broker sends as our last will."""
        p = self.profile
        body = Presence(machine_id=p.id, state=state, session=self.session, kind=p.kind.value, region=p.region, territory=p.territory)
        return seal(body, self.identity)

    @property
    def busy(self) -> bool:
        """Working on (or charging for) a job."""
        return self._running is not None

    def use_clock(self, clock: ScaledClock) -> None:
        """Follow ``clock`` (the market's, in one process); idle machines only."""
        self.clock = clock
        self.driver = SimDriver(self.profile, clock)

    def start(self) -> MachineNode:
        """Join the market. A node on a hub of its own connects it with a last will saying offline;
        on a shared, connected hub it has none and says offline itself when stopped."""
        if not self.hub.connected:
            self.hub.set_will(topics.presence(self.id), self.presence("offline"))
            self.hub.connect()
        for topic in self._cfp_topics:
            self.hub.subscribe(topic, self._deliver)
        self.hub.publish(topics.presence(self.id), self.presence("online"), retain=True)
        return self

    def stop(self) -> None:
        """Leave the market: say offline, stop listening; contracts in hand are left to the requester's
        takeover (as if the machine had dropped out)."""
        for topic in self._cfp_topics:
            self.hub.unsubscribe(topic, self._deliver)
        self.mailbox.call(self._leave)  # on the mailbox thread: the node's state is touched by it alone
        if self._own_mailbox:
            self.mailbox.close()

    def _leave(self) -> None:
        for job_id in list(self._jobs):
            self._forget(job_id)
        self._running = None
        self.hub.publish(topics.presence(self.id), self.presence("offline"), retain=True)

    def _deliver(self, topic: str, env: Envelope) -> None:
        self.mailbox.post(self._handle, env)

    def _handle(self, env: Envelope) -> None:
        body = env.body
        if isinstance(body, CallForProposals):
            self._on_cfp(env, body)
        elif isinstance(body, Award | JobClosed):
            self._on_award_topic(env, body)
        elif isinstance(body, JobEvent):
            self._on_event(env, body)

    # -- bidding -----------------------------------------------------------------------------

    def status(self, deadline_at: int | None = None) -> MachineStatus:
        """Wear, battery and position now, and the work that would run before a new job due at
        ``deadline_at``: the job in hand plus queued jobs due no later (the queue runs earliest
        deadline first)."""
        active = [c for c in self._contracts() if c.state in ACTIVE]
        ahead = [c for c in active if c is not self._running and (deadline_at is None or c.deadline_at <= deadline_at)]
        hours = 0.0
        position = battery = None
        wear = 0.0
        if self.driver is not None:
            t = self.driver.telemetry()
            position, battery, wear = t.position, t.battery_pct, t.wear_pct
            if self._running is not None:
                done = t.progress if t.job_id == self._running.job.id else 0.0
                hours += self._running.hours * (1 - done)
        if self._running is not None and self._running.job.dropoff is not None:
            position = self._running.job.dropoff
        vehicle = self.profile.vehicle
        for c in sorted(ahead, key=lambda c: c.deadline_at):  # a vehicle drives from dropoff to pickup, using charge
            work = estimate(self.profile, c.job, position=position)
            hours += work.total_hours
            if vehicle is not None and battery is not None:
                battery = max(battery - 100 * work.total_km * vehicle.energy_kwh_per_km / vehicle.battery_kwh, 0.0)
                position = c.job.dropoff
        return MachineStatus(wear_pct=wear, queue_len=len(active), queue_hours=hours, position=position, battery_pct=battery)

    def _contracts(self) -> list[Contract]:
        return [f.contract for f in self._jobs.values() if f.contract is not None]

    def _hours(self, job: JobSpec, position: Point | None = None) -> float:
        return estimate(self.profile, job, position=position).total_hours

    def decide(self, job: JobSpec, deadline_at: int, speed: float) -> Decision:
        """The bidding decision: the rule engine (the LLM agent's issue wraps this), then a check
        that slotting the job in by its deadline leaves every job already accepted on time."""
        decision = decide(self.profile, job, self.status(deadline_at), self.market)
        if decision.action != "bid" or decision.eta_h is None:
            return decision
        finish = decision.eta_h
        later = sorted((c for c in self._contracts() if c.state in ("accepted", "funded") and c.deadline_at > deadline_at),
                       key=lambda c: c.deadline_at)
        position = job.dropoff
        for c in later:
            finish += estimate(self.profile, c.job, position=position).total_hours
            position = c.job.dropoff or position
            if finish > _hours_left(c.deadline_at, speed):
                rule = Rule(code="decline.deadline", detail=f"would make accepted job {c.job.id} late")
                return Decision(action="decline", eta_h=decision.eta_h, rules=(rule,), reason=f"decline: {rule.detail}")
        return decision

    def _on_cfp(self, env: Envelope, cfp: CallForProposals) -> None:
        self.stats.cfps += 1
        if self.clock is None:  # a node in its own process follows the clock of the market it hears
            self.use_clock(ScaledClock(cfp.speed))
        job = cfp.job
        if now_ms() > cfp.bid_deadline or job.id in self._jobs:
            return
        decision = self.decide(self._remaining(job, cfp.deadline_at, cfp.speed), cfp.deadline_at, cfp.speed)
        if decision.action != "bid" or decision.price is None or decision.cost is None or decision.price > cfp.reserve:
            self.stats.declined_cfps += 1
            self.stats.declines.update({r.code for r in decision.rules if r.code.startswith("decline")} or {"decline.reserve"})
            return
        self._jobs[job.id] = Followed(cfp, env.sender)
        self.hub.subscribe(topics.award(job.id), self._deliver)
        # if the requester never closes the job (it died), stop following it well after its deadline
        self.mailbox.call_later((cfp.deadline_at - now_ms()) / 1000 + FORGET_AFTER_S, self._forget, job.id)
        bid = Bid(job_id=job.id, machine_id=self.id, price=decision.price, eta_h=decision.eta_h or 0.0,
                  cost=decision.cost.variable, reason=decision.reason)
        self.hub.publish(topics.bids(job.id), seal(bid, self.identity))
        self.stats.bids += 1

    def _remaining(self, job: JobSpec, deadline_at: int, speed: float) -> JobSpec:
        """The job with its deadline counted from now, in simulated hours."""
        return job.model_copy(update={"deadline_h": max(_hours_left(deadline_at, speed), 1e-9)})

    # -- award and acceptance ----------------------------------------------------------------

    def _on_award_topic(self, env: Envelope, body: Award | JobClosed) -> None:
        followed = self._jobs.get(body.job_id)
        if followed is None or env.sender != followed.requester:
            return  # not a job we bid on, or not from the requester that posted it
        contract = followed.contract
        if isinstance(body, JobClosed):
            if contract and contract.state == "done" and body.outcome == "paid" and body.machine_id == self.id:
                self._settle(contract)  # the 'paid' event may arrive after this, or not at all
            if contract and contract.state in ACTIVE:
                contract.state = "cancelled"
                self._stop_running(contract)
            self._forget(body.job_id)
            return
        if body.machine_id != self.id:
            if contract and contract.state in ("accepted", "funded"):
                contract.state = "withdrawn"  # our accept came too late; the job went to another machine
                self._stop_running(contract)
            return
        self.stats.awards += 1
        if contract and contract.state in ACTIVE:
            self._publish_event(body.job_id, "accepted", detail="repeat")  # our accept was lost; say it again
            return
        if now_ms() > body.accept_by:
            return
        cfp = followed.cfp
        decision = self.decide(self._remaining(cfp.job.model_copy(update={"max_price": None}), cfp.deadline_at, cfp.speed),
                               cfp.deadline_at, cfp.speed)
        least = max(decision.cost.total, self.profile.policy.price_floor) if decision.cost else None
        if decision.action != "bid" or least is None or body.price < least:
            why = decision.reason if decision.action != "bid" else f"price {body.price} below our least {least}"
            self._publish_event(body.job_id, "declined", detail=why)
            return
        contract = Contract(job=cfp.job, requester=followed.requester, price=body.price, speed=cfp.speed,
                            deadline_at=cfp.deadline_at, accept_by=body.accept_by, hours=self._hours(cfp.job))
        if followed.contract is None:
            self.hub.subscribe(topics.events(body.job_id), self._deliver)
        followed.contract = contract
        contract.timers.append(self.mailbox.call_later((body.accept_by - now_ms()) / 1000 + FUND_WAIT_S, self._unfunded, contract))
        self.stats.accepted += 1
        self._publish_event(body.job_id, "accepted", detail="takeover" if body.takeover else "")

    # -- execution ---------------------------------------------------------------------------

    def _on_event(self, env: Envelope, event: JobEvent) -> None:
        followed = self._jobs.get(event.job_id)
        contract = followed.contract if followed else None
        if contract is None or env.sender != contract.requester or event.machine_id != self.id:
            return
        if event.kind == "funded" and contract.state == "accepted":
            if self.ledger is not None and not self._escrow_holds(contract):
                return
            contract.state = "funded"
            contract.cancel_timers()
            self._maybe_start()
        elif event.kind == "paid" and contract.state == "done":
            self._settle(contract)

    def _escrow_holds(self, contract: Contract) -> bool:
        assert self.ledger is not None
        try:
            escrow = self.ledger.escrow(contract.job.id)
        except EscrowNotFound:
            log.warning("machine=%s job=%s told funded but no escrow exists", self.id, contract.job.id)
            return False
        return escrow.state.value == "held" and escrow.amount >= contract.price

    def _unfunded(self, contract: Contract) -> None:
        if contract.state == "accepted":
            log.warning("machine=%s job=%s never funded; slot released", self.id, contract.job.id)
            contract.state = "withdrawn"

    def _maybe_start(self) -> None:
        if self._running is not None or self.driver is None or self.clock is None:
            return
        ready = [c for c in self._contracts() if c.state == "funded"]
        if not ready:
            return
        contract = min(ready, key=lambda c: c.deadline_at)  # earliest deadline first
        self._running = contract
        t = self.driver.telemetry()
        work = estimate(self.profile, contract.job, position=t.position)
        vehicle = self.profile.vehicle
        charge_h = vehicle.charge_hours(work.total_km, t.battery_pct or 0.0) if vehicle else 0.0
        if charge_h > 0:  # parked, the driver charges; start when the battery holds the route
            contract.timers.append(self.mailbox.call_later(self.clock.real_seconds(charge_h), self._begin, contract))
        else:
            self._begin(contract)

    def _begin(self, contract: Contract) -> None:
        assert self.driver is not None and self.clock is not None
        if contract.state != "funded" or self._running is not contract:
            return
        t = self.driver.telemetry()
        work = estimate(self.profile, contract.job, position=t.position)
        contract.hours = work.total_hours
        contract.cost = job_cost(self.profile, work, self.market)
        route = [p for p in (contract.job.pickup, contract.job.dropoff) if p is not None]
        self.driver.start_job(contract.job.id, max(work.total_hours, 1e-9), route=route)
        contract.state = "running"
        self._publish_event(contract.job.id, "started")
        self._publish_telemetry()
        real = self.clock.real_seconds(work.total_hours)
        fail = contract.job.id in self.fail_jobs
        for step in range(1, self.progress_steps):
            share = step / self.progress_steps
            if fail and share >= 0.5:
                contract.timers.append(self.mailbox.call_later(real * share, self._fail, contract, "simulated fault"))
                return
            contract.timers.append(self.mailbox.call_later(real * share, self._progress, contract, share))
        contract.timers.append(self.mailbox.call_later(real, self._finish, contract))

    def _progress(self, contract: Contract, share: float) -> None:
        if contract.state == "running":
            self._publish_event(contract.job.id, "progress", progress=share)

    def _finish(self, contract: Contract) -> None:
        if contract.state != "running":
            return
        assert self.driver is not None
        self.driver.finish_job()
        contract.state = "done"
        self._running = None
        self.stats.done += 1
        self.stats.busy_hours += contract.hours
        self._publish_event(contract.job.id, "done", progress=1.0)
        self._publish_telemetry()
        self._maybe_start()

    def _fail(self, contract: Contract, reason: str) -> None:
        if contract.state != "running":
            return
        self.stats.failed += 1
        contract.state = "failed"
        self._stop_running(contract)
        self._publish_event(contract.job.id, "failed", detail=reason)

    def _stop_running(self, contract: Contract) -> None:
        contract.cancel_timers()
        if self._running is contract:
            assert self.driver is not None
            self.driver.abort_job()
            self._running = None
            self._maybe_start()

    def _settle(self, contract: Contract) -> None:
        assert contract.cost is not None
        costs = settlement.JobCosts.of(contract.price, contract.cost)
        if self.ledger is not None:
            settlement.settle_costs(self.ledger, contract.job.id, self.id, costs)
        contract.state = "paid"
        s = self.stats
        s.paid += 1
        s.revenue += costs.price
        s.energy += costs.energy
        s.wear_cost += costs.wear
        s.consumables += costs.consumables
        s.to_owners += costs.to_owners
        s.settled.append((contract.job.id, costs))

    # -- helpers -----------------------------------------------------------------------------

    def _forget(self, job_id: str) -> None:
        """Stop following a job: the requester closed it, or the machine is leaving."""
        followed = self._jobs.pop(job_id, None)
        if followed is None:
            return
        self.hub.unsubscribe(topics.award(job_id), self._deliver)
        if followed.contract is not None:
            followed.contract.cancel_timers()
            self.hub.unsubscribe(topics.events(job_id), self._deliver)

    def _publish_event(self, job_id: str, kind: EventKind, *, progress: float = 0.0, detail: str = "") -> None:
        event = JobEvent(job_id=job_id, machine_id=self.id, kind=kind, progress=progress, detail=detail)
        self._publish(topics.events(job_id), event)
        if self.on_event:
            self.on_event(self.id, event)

    def _publish_telemetry(self) -> None:
        if self.driver is not None:
            self._publish(topics.telemetry(self.id), TelemetryReport(telemetry=self.driver.telemetry()), retain=True)

    def _publish(self, topic: str, body: Body, *, retain: bool = False) -> None:
        self.hub.publish(topic, seal(body, self.identity), retain=retain)
