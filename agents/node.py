"""A machine node: the machine's side of the contract net, on its own mailbox thread.

It hears calls for proposals for its kind in its territory, prices them with the rule engine, and,
when it has a model, asks its LLM agent for a bid off the mailbox thread: the answer is checked by
the rules (``pricing.guard``) and a timer falls back to the rule engine's own decision before the
bid deadline, whatever the model does. It bids or stays silent, accepts an award
only if it can still keep the deadline, waits for escrow, runs the job on its driver with progress
events, and when paid settles its costs and pays its shareholders. Every step checks who sent the
message: awards and payments only count from the requester that posted the job.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from agents.control import ControlDesk
from agents.execution import JobRunner
from agents.snapshot import MachineSnapshot
from core.clock import Timeline
from core.errors import CommandRejected, DriverError, EscrowNotFound, MemoryStoreError
from core.mailbox import Mailbox, Timer
from hub import topics
from hub.envelope import Envelope, seal
from hub.messages import (
    Award,
    Bid,
    Body,
    CallForProposals,
    ControlCommand,
    EventKind,
    GovernanceNotice,
    JobClosed,
    JobEvent,
    Presence,
    TelemetryReport,
)
from hub.transport import Hub
from ledger import Charter, Identity, Ledger, settlement
from ledger.operations import Operations
from machines.driver import Driver, SimDriver, Telemetry
from machines.job import JobSpec
from machines.profile import MachineProfile, Point, Policy
from machines.work import estimate
from memory.signals import DemandLog, outcome_item, price_signal, wear_item
from memory.store import MemoryItem
from pricing.bids import BidRecord, OpenCall
from pricing.guard import BidDecision, BidProposal, ModelUse, from_rules, guard
from pricing.rules import CostBreakdown, Decision, MachineStatus, MarketContext, MemorySignal, Rule, decide, job_cost
from tools.deps import MachineDeps

if TYPE_CHECKING:
    from agents.llm import BackgroundLoop
    from agents.machine_agent import MachineAgent
    from agents.workflow import JobFlows
    from ledger.governance import Governance
    from ledger.proposals import Standing
    from memory import MachineMemory

__all__ = ["Contract", "MachineNode", "NodeStats", "QueuedContract"]

log = logging.getLogger("tamc.node")

ContractState = Literal["accepted", "funded", "running", "done", "paid", "failed", "withdrawn", "cancelled"]
ACTIVE = ("accepted", "funded", "running")
# The waits below are seconds of real time at the market's pace: on a clock ``speed`` times faster
# than real time, each is ``speed`` times as many market seconds (``MachineNode._s``).
FORGET_AFTER_S = 60.0
FUND_WAIT_S = 10.0
"""After accepting, how long a machine keeps the slot for a requester that has not funded."""
BID_MARGIN_S = 0.05
BID_MARGIN_SHARE = 0.2
"""Kept before a bid deadline to publish the rule engine's bid if the model is late: the larger of 50 ms
and a fifth of the window (a fixed 50 ms was missed by 29 ms on a loaded 2-core CI machine: the broker,
thread hand-offs and the GIL between the timer and the requester grow with the load, not the window)."""
MIN_MODEL_BUDGET_S = 0.005
HISTORY = 200
MEMORY_WARN_EVERY_S = 60.0
MEMORY_BUDGET_S = 0.25
"""At most (and at most a quarter of the bid window, so the bid still travels in time) a call waits
for memory before the rules price without it."""

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
    wear_at_start: float = 0.0
    expected_wear: float = 0.0
    """Wear the job should cost; much more is a spike a person looks at."""
    timers: list[Timer] = field(default_factory=list)
    flow: str | None = None
    """The job's workflow thread, once it runs."""
    waiting: Literal["tick", "operator"] | None = None
    """What the workflow waits for now."""
    handoff: str | None = None
    """The handoff the workflow waits on."""
    progress: float = 0.0
    reported: float = 0.0
    """The last progress step published."""
    tick: Timer | None = None
    """The workflow's next reading (one at a time: a long job on a real machine ticks for hours)."""
    stepping: bool = False
    """A workflow step is in flight on the workflows' thread."""
    signals: list[dict[str, Any]] = field(default_factory=list)
    """Signals for the workflow that came while a step was in flight, in order."""

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()
        if self.tick is not None:
            self.tick.cancel()
            self.tick = None


class QueuedContract(BaseModel):
    """A job the machine has accepted and not yet been paid for."""

    job_id: str
    capability: str
    description: str
    state: str
    price: int
    deadline_at: int
    """Epoch milliseconds on the market's clock."""


@dataclass
class Followed:
    """A job this machine bid on, followed on its award topic until the requester closes it (a
    machine that lost, or dropped out, may still be asked to take it over)."""

    call: OpenCall
    requester: str
    contract: Contract | None = None
    forget: Timer | None = None
    """Stops following the job if its requester never closes it (cancelled when it does)."""


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
    paths: Counter[str] = field(default_factory=Counter)
    """Decisions by the path that made them: rules, llm, llm-clamped, rules-fallback, rules-fast-path."""
    model_calls: int = 0
    """Requests sent to the model."""
    model_decisions: int = 0
    """Decisions the model was asked for (one may take several requests)."""
    input_tokens: int = 0
    output_tokens: int = 0
    model_latency_ms: list[float] = field(default_factory=list)
    model_errors: Counter[str] = field(default_factory=Counter)
    """Why the model's answer was not used: timeout, invalid output, model error, transport error."""
    memory_priced: int = 0
    """Bids priced with a memory signal (similar past jobs)."""
    memory_records: int = 0
    memory_errors: int = 0
    """Memory operations that failed; the machine went on without memory for them."""
    memory_late: int = 0
    """Calls priced without memory because its answer came too late for the bid."""

    @property
    def costs(self) -> int:
        return self.energy + self.wear_cost + self.consumables

    def count_model(self, use: ModelUse) -> None:
        self.model_decisions += 1
        self.model_calls += use.calls
        self.input_tokens += use.input_tokens
        self.output_tokens += use.output_tokens
        self.model_latency_ms.append(use.latency_ms)
        if use.error:
            self.model_errors[use.error.split(":", 1)[0]] += 1


class MachineNode:
    def __init__(
        self,
        profile: MachineProfile,
        identity: Identity,
        hub: Hub,
        *,
        ledger: Ledger | None = None,
        mailbox: Mailbox | None = None,
        clock: Timeline | None = None,
        market: MarketContext | None = None,
        fail_jobs: frozenset[str] = frozenset(),
        progress_steps: int = 4,
        on_event: Callable[[str, JobEvent], None] | None = None,
        agent: MachineAgent | None = None,
        loop: BackgroundLoop | None = None,
        memory: MachineMemory | None = None,
        governance: Governance | None = None,
        auto_bid: bool = True,
        wear_pct: float = 0.0,
        telemetry_every_s: float | None = None,
        flows: JobFlows | None = None,
        driver: Driver | None = None,
        charter: Charter | None = None,
        anomalies: dict[str, tuple[float, str]] | None = None,
        tick_s: float = 1.0,
    ) -> None:
        self.profile = profile
        self.base_profile = profile
        """The profile as loaded; ``profile`` is it with what the holders voted applied."""
        self.standing: Literal["active", "parked", "retired"] = "active"
        self.retain_bps: int | None = None
        """Payout policy: share of each job's profit (after its fixed costs) kept; None pays it all out."""
        self.id = profile.id
        self.identity = identity
        self.hub = hub
        self.ledger = ledger
        self.clock: Timeline = clock or hub.clock
        """Everything the node waits for and stamps runs on it (its hub's clock unless told)."""
        self.mailbox = mailbox or Mailbox(f"node-{profile.id}", clock=self.clock)
        self._own_mailbox = mailbox is None
        self.market = market or MarketContext()
        self.fail_jobs = fail_jobs
        self.progress_steps = progress_steps
        self.on_event = on_event
        self.session = uuid.uuid4().hex
        self.stats = NodeStats()
        self.wear_pct = wear_pct
        """Wear when the node starts (a machine with a past)."""
        self.driver: Driver | None = driver if driver is not None else SimDriver(profile, self.clock, wear_pct=wear_pct)
        if driver is not None and hasattr(driver, "seconds_per_hour"):
            driver.seconds_per_hour = 3600 / self.clock.speed  # a real machine works a market hour in this many real seconds
        if flows is None:
            from agents.workflow import JobFlows, in_memory

            flows = JobFlows(in_memory())
        self.flows = flows
        """Where each job's workflow is checkpointed (in memory unless the caller gives a SQLite or PostgreSQL one)."""
        self.operations = Operations(ledger.engine) if ledger is not None else None
        """Operators, handoffs and the control audit (in the ledger's database)."""
        self._charter = charter or Charter()
        self.anomalies = dict(anomalies or {})
        """Simulation aid: job id -> (progress share, fault) injected into the simulator mid-job."""
        self.injected: set[str] = set()
        self.runner = JobRunner(self, tick_s=tick_s)
        self.control = ControlDesk(self)
        self.acting_for: str | None = None
        """The operator whose command the node is carrying out now (None: the agent acts)."""
        self.actions: deque[tuple[float, str, str]] = deque(maxlen=1000)
        """(market time, actor, what) of everything the node sent on the hub but telemetry and presence:
        who acted on the machine, and when (the agent, or an operator's did)."""
        self._jobs: dict[str, Followed] = {}
        self._running: Contract | None = None
        self._cfp_topics = [topics.cfp(region, profile.kind.value) for region in profile.territory]
        self.agent = agent
        self.loop = loop
        if agent is not None and loop is None:
            from agents.llm import shared_loop

            self.loop = shared_loop()
        self.memory = memory
        self._demand = DemandLog()
        self._recalling: dict[str, Timer] = {}
        """Calls waiting for memory's price signal, with the timer that prices without it if memory is late."""
        self._memory_warned = 0.0
        self.governance = governance
        self.auto_bid = auto_bid
        """False holds each call open until its bid deadline for a person (or their chat) to bid by hand."""
        self._calls: dict[str, OpenCall] = {}
        """Calls heard and not yet answered (the model may be pricing them)."""
        self._pending: dict[str, Decision] = {}
        """Calls waiting for the model, with the rule engine's decision to fall back on."""
        self._history: deque[BidRecord] = deque(maxlen=HISTORY)
        self._records: dict[str, BidRecord] = {}
        self._telemetry_log: deque[Telemetry] = deque(maxlen=HISTORY)
        self._started = False
        self._stopped = False
        self._maintenance_due = False
        self.telemetry_every_s = telemetry_every_s
        """Publish telemetry this often (real seconds at the market's pace) besides at each change: a
        live view follows the head, the temperatures and the battery between events. None publishes
        on changes only."""
        if self.memory is not None:
            self.memory.clock = self.clock.now  # records and retention run on market time

    def _s(self, real_s: float) -> float:
        """``real_s`` seconds at the market's pace, in seconds of the node's clock."""
        return real_s * self.clock.speed

    def _hours_left(self, deadline_at: int) -> float:
        return (deadline_at - self.clock.ms()) / 3_600_000

    # -- life --------------------------------------------------------------------------------

    def presence(self, state: Literal["online", "offline"]) -> bytes:
        """The signed presence notice; the offline one is what the broker sends as our last will.
        A parked machine is online and serves no territory."""
        p = self.profile
        territory = p.territory if self.standing == "active" else ()
        body = Presence(machine_id=p.id, state=state, session=self.session, kind=p.kind.value, region=p.region, territory=territory)
        return seal(body, self.identity, ts=self.clock.ms())

    def _apply_standing(self, standing: Standing, retain_bps: int | None) -> None:
        """Bid from now on by what the holders decided: policy, region, territory, parked or not."""
        base = self.base_profile
        region = standing.region or base.region
        changes = dict(standing.policy)
        if region != base.region and "territory" not in changes and set(base.territory) == {base.region}:
            changes["territory"] = [region]  # a workshop serves where it stands
        policy = Policy.model_validate({**base.policy.model_dump(), **changes})
        self.profile = base.model_copy(update={"region": region, "policy": policy})
        self.retain_bps = retain_bps
        self.standing = standing.status
        wanted = [topics.cfp(r, base.kind.value) for r in self.profile.territory] if standing.status == "active" else []
        if self._started:
            for topic in set(self._cfp_topics) - set(wanted):
                self.hub.unsubscribe(topic, self._deliver)
            for topic in set(wanted) - set(self._cfp_topics):
                self.hub.subscribe(topic, self._deliver)
            if standing.status != "retired":
                self.hub.publish(topics.presence(self.id), self.presence("online"), retain=True)
        self._cfp_topics = wanted

    def work_in_hand(self) -> int:
        """What the jobs accepted and not yet paid will leave after their variable costs: earned,
        not yet booked (from any thread). A machine busy with long jobs is not losing money."""

        def total() -> int:
            left = 0
            for c in self._contracts():
                if c.state in (*ACTIVE, "done"):
                    cost = c.cost or job_cost(self.profile, estimate(self.profile, c.job), self.market)
                    left += settlement.JobCosts.of(c.price, cost).to_owners
            return left

        return self.mailbox.call(total)

    @property
    def maintenance_due(self) -> bool:
        """Serviced, and waiting for the job in hand to end to reset its wear (from any thread)."""
        return self.mailbox.call(lambda: self._maintenance_due)

    def maintained(self) -> None:
        """The maintenance job was done: wear back to zero (from any thread); a machine busy with a
        job is serviced as soon as that job ends."""
        self.mailbox.call(self._maintain)

    def _maintain(self) -> None:
        if self.driver is None:
            return
        if self._running is not None:
            self._maintenance_due = True
            return
        self._maintenance_due = False
        self.driver.maintain()
        self._publish_telemetry()

    @property
    def busy(self) -> bool:
        """Working on (or charging for) a job."""
        return self._running is not None

    def start(self) -> MachineNode:
        """Join the market. A node on a hub of its own connects it with a last will saying offline;
        on a shared, connected hub it has none and says offline itself when stopped."""
        if not self.hub.connected:
            self.hub.set_will(topics.presence(self.id), self.presence("offline"))
            self.hub.connect()
        self.mailbox.call(self._join)
        return self

    def _join(self) -> None:
        if self.governance is not None:
            self._reload_standing()
            self.hub.subscribe(topics.governance(self.id), self._deliver)
        for topic in self._cfp_topics:
            self.hub.subscribe(topic, self._deliver)
        self.hub.subscribe(topics.control(self.id), self._deliver)
        self._started = True
        self.runner.recover()  # jobs and handoffs left open by an earlier run of this machine
        self.hub.publish(topics.presence(self.id), self.presence("online"), retain=True)
        if self.telemetry_every_s:
            self.mailbox.call_later(self._s(self.telemetry_every_s), self._telemetry_tick)

    def _telemetry_tick(self) -> None:
        if not self._started or not self.telemetry_every_s:
            return
        self._publish_telemetry(keep=False)
        self.mailbox.call_later(self._s(self.telemetry_every_s), self._telemetry_tick)

    def stop(self) -> None:
        """Leave the market: say offline, stop listening; contracts in hand are left to the requester's
        takeover (as if the machine had dropped out). Stopping twice is stopping once."""
        if self._stopped:
            return
        self._stopped = True
        self.mailbox.call(self._leave)  # on the mailbox thread: the node's state is touched by it alone
        if self._own_mailbox:
            self.mailbox.close()

    def retire(self) -> None:
        """Leave the market for good (the holders or the charter retired the machine)."""
        self.stop()
        self.standing = "retired"  # the mailbox is closed: nothing else touches the node now

    def margin(self) -> int:
        """Revenue less variable costs booked so far (from any thread)."""
        return self.mailbox.call(lambda: self.stats.revenue - self.stats.costs)

    def _leave(self) -> None:
        if self.governance is not None:
            self.hub.unsubscribe(topics.governance(self.id), self._deliver)
        for topic in self._cfp_topics:
            self.hub.unsubscribe(topic, self._deliver)
        self.hub.unsubscribe(topics.control(self.id), self._deliver)
        self._started = False
        for job_id in list(self._jobs):
            self._forget(job_id)
        self._store(self._demand.flush())
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
        elif isinstance(body, GovernanceNotice) and body.machine_id == self.id and body.state == "executed":
            self._reload_standing()
        elif isinstance(body, ControlCommand):
            self.control.on_command(env, body)

    def reload_standing(self) -> None:
        """Apply what the holders decided, now (from any thread)."""
        if self.governance is not None:
            self.mailbox.call(self._reload_standing)

    def _reload_standing(self) -> None:
        """Read what the holders decided from the ledger (the notice that prompts it proves nothing)."""
        assert self.governance is not None
        standing = self.governance.standing(self.id)
        if standing.version == 0:
            return  # never registered for governance: the profile's policy, everything paid out
        self._charter = self.governance.charter(self.id)
        retain = standing.retain_bps if standing.retain_bps is not None else self._charter.retain_bps
        self._apply_standing(standing, retain)

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

    def decide(self, job: JobSpec, deadline_at: int, memory: MemorySignal | None = None) -> Decision:
        """The rule engine's decision (priced with what memory says of similar jobs, if anything),
        then a check that slotting the job in by its deadline leaves every job already accepted on time."""
        market = self.market if memory is None else self.market.model_copy(update={"memory": memory})
        decision = decide(self.profile, job, self.status(deadline_at), market)
        if decision.action != "bid" or decision.eta_h is None:
            return decision
        finish = decision.eta_h
        later = sorted((c for c in self._contracts() if c.state in ("accepted", "funded") and c.deadline_at > deadline_at),
                       key=lambda c: c.deadline_at)
        position = job.dropoff
        for c in later:
            finish += estimate(self.profile, c.job, position=position).total_hours
            position = c.job.dropoff or position
            if finish > self._hours_left(c.deadline_at):
                rule = Rule(code="decline.deadline", detail=f"would make accepted job {c.job.id} late")
                return Decision(action="decline", eta_h=decision.eta_h, rules=(rule,), reason=f"decline: {rule.detail}")
        return decision

    def _on_cfp(self, env: Envelope, cfp: CallForProposals) -> None:
        self.stats.cfps += 1
        if self.control.held_by is not None:
            self.stats.declines["decline.operator"] += 1  # a person holds the machine: the agent stays silent
            return
        job = cfp.job
        if self.clock.ms() > cfp.bid_deadline or job.id in self._jobs or job.id in self._calls:
            return
        call = OpenCall(job=job, requester=env.sender, reserve=cfp.reserve, bid_deadline=cfp.bid_deadline,
                        deadline_at=cfp.deadline_at, speed=cfp.speed)
        self._count_demand(job, "calls")
        self._calls[job.id] = call
        rules = self._rule_decision(call)
        if self.memory is not None and rules.action == "bid":
            self._recall_prices(call)  # answered in _priced, with the rules rerun on what memory says
        else:
            self._respond(call, rules)

    def _recall_prices(self, call: OpenCall) -> None:
        """Ask memory what similar jobs went for, off the mailbox thread (awards and accepts are not
        held up behind a vector search); answer when it returns, or without it once it is late."""
        assert self.memory is not None
        job_id = call.job.id
        window = (call.bid_deadline - self.clock.ms()) / 1000  # the model's margin is no part of it: the rules bid at once
        self._recalling[job_id] = self.mailbox.call_later(max(min(self._s(MEMORY_BUDGET_S), window / 4), 0.0), self._priced, job_id, None)
        reading = self.clock.hold(f"memory read for {self.id} on {job_id}")  # a virtual clock waits for it
        future = self.memory.store.submit(price_signal, self.memory, call.job, self.profile.policy)

        def answered(f: Future[MemorySignal | None]) -> None:
            self.mailbox.post(self._priced, job_id, f)
            reading.release()

        future.add_done_callback(answered)

    def _priced(self, job_id: str, future: Future[MemorySignal | None] | None) -> None:
        late = self._recalling.pop(job_id, None)
        if late is None:
            return  # answered already (memory was late)
        late.cancel()  # no timer left to fire for nothing (on a virtual clock, each is an instant of its own)
        call = self._calls.get(job_id)
        if call is None:
            return
        if future is None:
            self.stats.memory_late += 1
        else:
            try:
                signal = future.result()
            except MemoryStoreError as exc:
                self._memory_failed("price from memory", exc)
            except Exception:  # a bug on the memory path must not cost the bid
                self.stats.memory_errors += 1
                log.exception("machine=%s job=%s price from memory failed", self.id, job_id)
            else:
                if signal is not None:
                    call = call.model_copy(update={"memory": signal})
                    self._calls[job_id] = call
        self._respond(call)

    def _respond(self, call: OpenCall, rules: Decision | None = None) -> None:
        """Answer a call: by hand, by the rules (``rules`` if just computed), or by the model within them."""
        if not self.auto_bid:
            self.mailbox.call_later((call.bid_deadline - self.clock.ms()) / 1000, self._expire_call, call.job.id)
            return
        rules = rules or self._rule_decision(call)
        if self.agent is None or self.loop is None:
            self._answer(call, from_rules(rules, "rules"))
        elif rules.action != "bid":
            self._answer(call, from_rules(rules, "rules-fast-path", f"the rules refuse, no model can change that: {rules.reason}"))
        elif self.agent.is_routine(rules, call, self.status(call.deadline_at), self.market, self.profile.policy):
            self._answer(call, from_rules(rules, "rules-fast-path", f"routine job: {rules.reason}"))
        else:
            self._ask_model(call, rules)

    def _rule_decision(self, call: OpenCall) -> Decision:
        """The rules on a call, with the requester's reserve as the most it pays: a price that memory
        (or demand) puts above the reserve comes down to it, while the reserve covers the least price,
        instead of the machine staying silent on work it could do at a profit."""
        most = min(call.reserve, call.job.max_price) if call.job.max_price is not None else call.reserve
        job = self._remaining(call.job.model_copy(update={"max_price": most}), call.deadline_at)
        return self.decide(job, call.deadline_at, call.memory)

    def _ask_model(self, call: OpenCall, rules: Decision) -> None:
        """Hand the call to the model on the agent loop; a timer answers with the rules if it is late.

        The model thinks in real time: it gets the budget's market seconds as real seconds at the
        market's pace, and its answer lands after the market time its real latency is worth (at
        once on a real clock, where that time has passed; ``latency × speed`` later on a virtual
        one, which waits for it meanwhile), so the fallback timer races it on either clock."""
        assert self.agent is not None and self.loop is not None
        left = (call.bid_deadline - self.clock.ms()) / 1000
        budget = left - max(self._s(BID_MARGIN_S), BID_MARGIN_SHARE * left)
        if budget < self._s(MIN_MODEL_BUDGET_S):
            self._answer(call, from_rules(rules, "rules-fallback", f"no time to ask the model ({budget:.2f} market s left); {rules.reason}"))
            return
        job_id = call.job.id
        self._pending[job_id] = rules
        self.mailbox.call_later(budget, self._model_late, job_id, budget)  # the whole margin left to publish in
        thinking = self.clock.hold(f"model answer for {self.id} on {job_id}")
        future = self.loop.submit(self.agent.propose_bid(self.deps(), call, rules, budget / self.clock.speed))

        def landed(f: Future[tuple[BidProposal | None, ModelUse]]) -> None:
            try:
                use = f.result()[1] if not f.cancelled() and f.exception() is None else None
                late = self.clock.charge(use.latency_ms / 1000 if use is not None else 0.0)
                self.mailbox.call_later(late, self._model_answered, job_id, f)
            finally:
                thinking.release()

        future.add_done_callback(landed)

    def _model_answered(self, job_id: str, future: Future[tuple[BidProposal | None, ModelUse]]) -> None:
        assert self.agent is not None
        try:
            proposal, use = future.result()
        except Exception as exc:  # a bug in the agent path must not cost the bid
            log.exception("machine=%s job=%s model path failed", self.id, job_id)
            proposal, use = None, ModelUse(model=self.agent.label, error=f"agent error: {type(exc).__name__}: {exc}")
        self.stats.count_model(use)
        rules = self._pending.pop(job_id, None)
        call = self._calls.get(job_id)
        if rules is None or call is None:
            return  # answered already: the model was late, or a stakeholder bid by hand
        if proposal is None:
            self._answer(call, from_rules(rules, "rules-fallback", f"{use.error}; {rules.reason}", use))
        else:
            self._answer(call, guard(rules, proposal, self.profile.policy, call.reserve, use))

    def _model_late(self, job_id: str, budget: float) -> None:
        rules = self._pending.pop(job_id, None)
        call = self._calls.get(job_id)
        if rules is None or call is None:
            return
        use = ModelUse(model=self.agent.label if self.agent else "",
                       error=f"timeout: no answer within the {budget:.1f} market s budget ({budget / self.clock.speed:.3f} real s)")
        self._answer(call, from_rules(rules, "rules-fallback", f"{use.error}; {rules.reason}", use))

    def _expire_call(self, job_id: str) -> None:
        call = self._calls.get(job_id)
        if call is not None:
            rule = Rule(code="decline.manual", detail="held for a bid by hand; none came before the deadline")
            decision = Decision(action="decline", rules=(rule,), reason=f"decline: {rule.detail}")
            self._answer(call, from_rules(decision, "rules"))

    def _answer(self, call: OpenCall, decision: BidDecision) -> None:
        """Publish the decision on a call (or stay silent), and remember it."""
        job = call.job
        self._calls.pop(job.id, None)
        self._pending.pop(job.id, None)
        self.stats.paths[decision.path] += 1
        bid = decision.action == "bid" and decision.price is not None and decision.price <= call.reserve
        cost = decision.rules.cost.total if decision.rules.cost is not None else None
        record = BidRecord(job_id=job.id, capability=job.capability, region=job.region, at=self.clock.now(),
                           action="bid" if bid else "decline", price=decision.price if bid else None, cost=cost,
                           path=decision.path, reason=decision.why, outcome="pending" if bid else "declined")
        if decision.model is not None:
            use = decision.model
            record.model_calls, record.input_tokens, record.output_tokens, record.model_ms = (
                use.calls, use.input_tokens, use.output_tokens, use.latency_ms)
        if decision.proposal is not None and decision.path.startswith("llm"):
            record.confidence = decision.proposal.confidence
        self._history.append(record)
        log.info("machine=%s job=%s action=%s price=%s path=%s model_calls=%d tokens=%d+%d model_ms=%.1f why=%s", self.id,
                 job.id, record.action, record.price, decision.path, record.model_calls, record.input_tokens,
                 record.output_tokens, record.model_ms, decision.why)
        if not bid:
            self.stats.declined_cfps += 1
            codes = {r.code for r in decision.rules.rules if r.code.startswith("decline")} if decision.rules.action == "decline" else set()
            self.stats.declines.update(codes or ({"decline.model"} if decision.path.startswith("llm") else {"decline.reserve"}))
            return
        assert decision.price is not None
        self._records[job.id] = record
        self._count_demand(job, "bids")
        if any(r.code == "price.memory" for r in decision.rules.rules):
            self.stats.memory_priced += 1
        self._send_bid(call, decision.price, decision.eta_h or 0.0, decision.variable_cost, decision.why, decision.path)

    def _send_bid(self, call: OpenCall, price: int, eta_h: float, cost: int, reason: str, path: str) -> None:
        job = call.job
        followed = self._jobs[job.id] = Followed(call, call.requester)
        self.hub.subscribe(topics.award(job.id), self._deliver)
        # if the requester never closes the job (it died), stop following it well after its deadline
        followed.forget = self.mailbox.call_later((call.deadline_at - self.clock.ms()) / 1000 + self._s(FORGET_AFTER_S), self._forget, job.id)
        bid = Bid(job_id=job.id, machine_id=self.id, price=price, eta_h=eta_h, cost=cost, path=path, reason=reason[:500])
        self.hub.send(topics.bids(job.id), bid, self.identity)
        self.stats.bids += 1

    # -- the machine as its tools see it (MachinePort); callable from any thread ----------------

    def snapshot(self) -> MachineSnapshot:
        """The machine's state to save, so stakeholders can ask about it after it stops."""

        def take() -> MachineSnapshot:
            log_ = list(self._telemetry_log)
            now_t = self._telemetry_now()
            if now_t is not None and (not log_ or log_[-1] != now_t):
                log_.append(now_t)
            active = sum(1 for c in self._contracts() if c.state in ACTIVE)
            return MachineSnapshot(profile=self.profile, at=self.clock.now(), telemetry=log_[-HISTORY:],
                                   bids=[r.model_copy() for r in self._history], queue_len=active)

        return self.mailbox.call(take)

    def deps(self, actor: str = "agent") -> MachineDeps:
        return MachineDeps(machine=self, ledger=self.ledger, hub=self.hub, memory=self.memory, governance=self.governance,
                           identity=self.identity, actor=actor, clock=self.clock)

    def job_queue(self) -> list[QueuedContract]:
        """The jobs in hand, in the order they will run (from any thread)."""

        def read() -> list[QueuedContract]:
            live = [c for c in self._contracts() if c.state in (*ACTIVE, "done")]
            return [QueuedContract(job_id=c.job.id, capability=c.job.capability, description=c.job.description, state=c.state,
                                   price=c.price, deadline_at=c.deadline_at)
                    for c in sorted(live, key=lambda c: (c.state != "running", c.deadline_at))]

        return self.mailbox.call(read)

    def telemetry(self) -> Telemetry | None:
        return self.mailbox.call(self._telemetry_now)

    def _telemetry_now(self) -> Telemetry | None:
        if self.driver is not None:
            return self.driver.telemetry()
        return self._telemetry_log[-1] if self._telemetry_log else None

    def telemetry_history(self) -> list[Telemetry]:
        return self.mailbox.call(lambda: list(self._telemetry_log))

    def machine_status(self) -> MachineStatus:
        return self.mailbox.call(self.status)

    def open_call(self, job_id: str) -> OpenCall | None:
        return self.mailbox.call(self._calls.get, job_id)

    def open_calls(self) -> list[OpenCall]:
        return self.mailbox.call(lambda: list(self._calls.values()))

    def rule_decision(self, call: OpenCall) -> Decision:
        return self.mailbox.call(self._rule_decision, call)

    def bid_history(self) -> list[BidRecord]:
        return self.mailbox.call(lambda: [r.model_copy() for r in self._history])

    def submit_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        self.mailbox.call(self._manual_bid, job_id, price, eta_h, reason, path)

    def decline_call(self, job_id: str, reason: str) -> None:
        self.mailbox.call(self._manual_decline, job_id, reason)

    def _manual_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        call = self._calls.get(job_id)
        if call is None or self.clock.ms() > call.bid_deadline or self.control.held_by is not None:
            return
        rules = self._rule_decision(call)
        self._pending.pop(job_id, None)
        self._answer(call, BidDecision(action="bid", price=price, eta_h=eta_h, path=path, why=reason, rules=rules))

    def _manual_decline(self, job_id: str, reason: str) -> None:
        call = self._calls.get(job_id)
        if call is None:
            return
        rules = self._pending.pop(job_id, None) or self._rule_decision(call)
        self._answer(call, BidDecision(action="decline", path="llm", why=f"declined: {reason}", rules=rules))

    def _remaining(self, job: JobSpec, deadline_at: int) -> JobSpec:
        """The job with its deadline counted from now, in market hours."""
        return job.model_copy(update={"deadline_h": max(self._hours_left(deadline_at), 1e-9)})

    # -- award and acceptance ----------------------------------------------------------------

    def _on_award_topic(self, env: Envelope, body: Award | JobClosed) -> None:
        followed = self._jobs.get(body.job_id)
        if followed is None or env.sender != followed.requester:
            return  # not a job we bid on, or not from the requester that posted it
        self._note_outcome(body)
        contract = followed.contract
        if isinstance(body, JobClosed):
            if contract and contract.state == "done" and body.outcome == "paid" and body.machine_id == self.id:
                self._settle(contract)  # the 'paid' event may arrive after this, or not at all
            if contract and contract.state in ACTIVE:
                self.runner.closed(contract, body.outcome)
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
        if self.control.held_by is not None:
            return  # a person holds the machine: no accept, no decline; the requester moves on
        if contract and contract.state in ACTIVE:
            self._publish_event(body.job_id, "accepted", detail="repeat")  # our accept was lost; say it again
            return
        if self.clock.ms() > body.accept_by:
            return
        cfp = followed.call
        decision = self.decide(self._remaining(cfp.job.model_copy(update={"max_price": None}), cfp.deadline_at), cfp.deadline_at)
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
        contract.timers.append(self.mailbox.call_later((body.accept_by - self.clock.ms()) / 1000 + self._s(FUND_WAIT_S),
                                                       self._unfunded, contract))
        self.stats.accepted += 1
        self._publish_event(body.job_id, "accepted", detail="takeover" if body.takeover else "")

    def _note_outcome(self, body: Award | JobClosed) -> None:
        """Keep who won a job we bid on, and at what price — the answer to "why did we lose?" — and
        remember the first outcome of each job (the prices similar jobs will be bid at learn from it)."""
        record = self._records.get(body.job_id)
        if record is None or record.outcome != "pending":
            return
        if isinstance(body, Award):
            record.outcome = "won" if body.machine_id == self.id else "lost"
            record.winner, record.winning_price = body.machine_id, body.price
        elif body.machine_id is None:
            record.outcome = "no-award"
        else:
            return
        followed = self._jobs.get(body.job_id)
        if record.outcome == "won" and followed is not None:
            self._count_demand(followed.call.job, "wins")
        if followed is not None:
            self._store([outcome_item(followed.call.job, record)])

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
        if self._running is not None or self.driver is None or self.control.held_by is not None:
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
            contract.timers.append(self.mailbox.call_later(charge_h * 3600, self._begin, contract))
        else:
            self._begin(contract)

    def _begin(self, contract: Contract) -> None:
        """Run the job as a workflow (``agents.workflow``): it checks, starts, watches and ends it."""
        assert self.driver is not None
        if contract.state != "funded" or self._running is not contract:
            return
        if self.control.held_by is not None:  # a person took the machine while it charged: start after the handback
            self._running = None
            return
        t = self.driver.telemetry()
        work = estimate(self.profile, contract.job, position=t.position)
        contract.hours = work.total_hours
        contract.cost = job_cost(self.profile, work, self.market)
        contract.wear_at_start = t.wear_pct
        contract.state = "running"
        self.runner.begin(contract, work.total_hours, work.wear_pct(self.profile))

    def _job_done(self, contract: Contract) -> None:
        """The workflow finished the job (and said ``done``): book it, start the next."""
        assert self.driver is not None
        contract.state = "done"
        contract.cancel_timers()
        wear = self.driver.telemetry().wear_pct
        self._store([wear_item(contract.job.id, contract.job.capability, wear, wear - contract.wear_at_start, contract.hours)])
        if self._running is contract:
            self._running = None
        self.stats.done += 1
        self.stats.busy_hours += contract.hours
        if self._maintenance_due:
            self._maintain()
        self._publish_telemetry()
        self._maybe_start()

    def _job_given_up(self, contract: Contract) -> None:
        """The workflow ended the job unfinished (failed, escalated, aborted by an operator)."""
        if contract.state in ACTIVE:
            self.stats.failed += 1
            contract.state = "failed"
        self._stop_running(contract)

    def _stop_running(self, contract: Contract) -> None:
        contract.cancel_timers()
        if self._running is contract:
            assert self.driver is not None
            if self.driver.job_run(contract.job.id) in ("running", "paused"):
                try:
                    self.driver.cancel()
                except (CommandRejected, DriverError) as exc:
                    log.error("machine=%s job=%s cannot stop the job on the machine: %s", self.id, contract.job.id, exc)
            self._running = None
            if self._maintenance_due:
                self._maintain()
            self._maybe_start()

    def _contract(self, job_id: str) -> Contract | None:
        followed = self._jobs.get(job_id)
        return followed.contract if followed else None

    def _job_cost(self, job: JobSpec) -> CostBreakdown:
        return job_cost(self.profile, estimate(self.profile, job), self.market)

    def charter(self) -> Charter:
        """The machine's charter: its holders' (read with its standing), else the node's own."""
        return self._charter

    def _settle(self, contract: Contract) -> None:
        assert contract.cost is not None
        costs = settlement.JobCosts.of(contract.price, contract.cost)
        owed = costs.to_owners - costs.kept(self.retain_bps)
        if self.ledger is not None:
            owed = settlement.settle_costs(self.ledger, contract.job.id, self.id, costs, retain_bps=self.retain_bps)
        contract.state = "paid"
        s = self.stats
        s.paid += 1
        s.revenue += costs.price
        s.energy += costs.energy
        s.wear_cost += costs.wear
        s.consumables += costs.consumables
        s.to_owners += owed
        s.settled.append((contract.job.id, costs))

    # -- memory ------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock.now()

    def _count_demand(self, job: JobSpec, what: str) -> None:
        if self.memory is not None:
            self._store(self._demand.count(self._now(), job.region, job.capability, what))

    def _store(self, items: Sequence[MemoryItem | None]) -> None:
        """Remember ``items`` at market time, written in the background (a failure is counted and logged)."""
        now = self._now()
        kept = [i if i.at is not None else i._replace(at=now) for i in items if i is not None]
        if kept and self.memory is not None:
            self.memory.remember_later(kept)
            self.stats.memory_records += len(kept)

    def _memory_failed(self, doing: str, exc: MemoryStoreError) -> None:
        """Count a failed memory operation; log it at most once a minute. The machine goes on without it."""
        self.stats.memory_errors += 1
        now = self.clock.time()
        if now - self._memory_warned > self._s(MEMORY_WARN_EVERY_S):
            self._memory_warned = now
            log.warning("machine=%s memory=%s failed=%s error=%s", self.id, doing, self.stats.memory_errors, exc)

    # -- helpers -----------------------------------------------------------------------------

    def _forget(self, job_id: str) -> None:
        """Stop following a job: the requester closed it, or the machine is leaving."""
        self._calls.pop(job_id, None)
        self._records.pop(job_id, None)
        followed = self._jobs.pop(job_id, None)
        if followed is None:
            return
        if followed.forget is not None:
            followed.forget.cancel()
        self.hub.unsubscribe(topics.award(job_id), self._deliver)
        if followed.contract is not None:
            followed.contract.cancel_timers()
            self.hub.unsubscribe(topics.events(job_id), self._deliver)

    def _publish_event(self, job_id: str, kind: EventKind, *, progress: float = 0.0, detail: str = "") -> None:
        event = JobEvent(job_id=job_id, machine_id=self.id, kind=kind, progress=progress, detail=detail)
        self._publish(topics.events(job_id), event)
        if self.on_event:
            self.on_event(self.id, event)

    def _publish_telemetry(self, *, keep: bool = True) -> None:
        """Publish a reading; ``keep`` also puts it in the history (the periodic ones are not kept)."""
        if self.driver is not None:
            t = self.driver.telemetry()
            if keep:
                self._telemetry_log.append(t)
            self._publish(topics.telemetry(self.id), TelemetryReport(telemetry=t), retain=True)

    def _publish(self, topic: str, body: Body, *, retain: bool = False) -> None:
        if not isinstance(body, TelemetryReport | Presence):
            self.actions.append((self.clock.time(), self.acting_for or "agent", f"{body.TYPE} {getattr(body, 'kind', '')}".strip()))
        self.hub.send(topic, body, self.identity, retain=retain)

    @property
    def held_by(self) -> str | None:
        """The operator in control of the machine, or None when its agent runs it."""
        return self.control.held_by
