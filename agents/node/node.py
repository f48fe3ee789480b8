"""The machine node: the machine's side of the contract net, wired from its parts.

Each part is built with the parts it uses, never with the node, and their imports run one way:
``book`` (contracts, states, scheduling) and ``outbox`` (the one way out) at the bottom; ``bidder``
(calls, memory look-up, the model and its fallback timer, bids by hand); ``workshop`` (awards,
acceptance, funding, running each job through ``runner``, payment); ``control`` (operators) on top.
The node owns the mailbox thread that everything runs on, joins and leaves the market, applies what
the holders decided, and answers its tools (``MachinePort``) from any thread.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from agents.node.bidder import Bidder
from agents.node.book import ContractBook, QueuedContract
from agents.node.control import ControlDesk
from agents.node.diary import Diary
from agents.node.haggler import Haggler
from agents.node.holding import Holding
from agents.node.mandate import Mandate, StandingStatus
from agents.node.offers import Offers
from agents.node.outbox import HISTORY, Inbox, Outbox
from agents.node.recovery import recover
from agents.node.stats import NodeStats
from agents.node.workshop import Workshop
from agents.snapshot import MachineSnapshot
from agents.workflow import JobFlows, in_memory
from core.clock import Timeline
from core.mailbox import Mailbox
from hub import topics
from hub.dispatch import Dispatch
from hub.envelope import Envelope, seal
from hub.jobids import JobOwners, owner_of
from hub.messages import (
    Award,
    CallForProposals,
    ControlCommand,
    GovernanceNotice,
    Haggle,
    JobClosed,
    JobEvent,
    Presence,
    Release,
)
from hub.transport import Hub
from ledger import Charter, Identity, Ledger, settlement
from ledger.operations import Operations
from machines.driver import Driver, SimDriver, Telemetry
from machines.job import JobSpec
from machines.profile import MachineProfile
from pricing.bids import BidRecord, OpenCall
from pricing.rules import Decision, MachineStatus, MarketContext, MemorySignal
from tools.deps import MachineDeps

if TYPE_CHECKING:
    from agents.llm import BackgroundLoop
    from agents.machine_agent import MachineAgent
    from ledger.governance import Governance
    from memory import MachineMemory

__all__ = ["MachineNode"]

log = logging.getLogger("tamc.node")


class MachineNode:
    def __init__(self, profile: MachineProfile, identity: Identity, hub: Hub, *, ledger: Ledger | None = None,
                 mailbox: Mailbox | None = None, clock: Timeline | None = None, market: MarketContext | None = None,
                 driver: Driver | None = None, agent: MachineAgent | None = None,
                 loop: BackgroundLoop | None = None, memory: MachineMemory | None = None, governance: Governance | None = None,
                 charter: Charter | None = None, flows: JobFlows | None = None, auto_bid: bool = True, offers: bool = True,
                 progress_steps: int = 4,
                 tick_s: float = 1.0, telemetry_every_s: float | None = None,
                 on_event: Callable[[str, JobEvent], None] | None = None) -> None:
        self.id = profile.id
        self.identity, self.hub, self.ledger, self.governance, self.memory = identity, hub, ledger, governance, memory
        self.clock: Timeline = clock or hub.clock
        """Everything the node waits for and stamps runs on it (its hub's clock unless told)."""
        self.mailbox = mailbox or Mailbox(f"node-{profile.id}", clock=self.clock)
        self._own_mailbox = mailbox is None
        self.market = market or MarketContext()
        self.session = uuid.uuid4().hex
        self.stats = NodeStats()
        self.driver: Driver = driver if driver is not None else SimDriver(profile, self.clock)
        self.driver.set_pace(3600 / self.clock.speed)  # a real machine works a market hour in this many real seconds
        self.flows = flows if flows is not None else JobFlows(in_memory())
        """Where each job's workflow is checkpointed (in memory unless the caller gives a SQLite or PostgreSQL one)."""
        self.operations = Operations(ledger.engine) if ledger is not None else None
        """Operators, handoffs and the control audit (in the ledger's database)."""
        self.agent = agent
        if agent is not None and loop is None:
            from agents.llm import shared_loop

            loop = shared_loop()
        self.loop = loop
        if memory is not None:
            memory.clock = self.clock.now  # records and retention run on market time
        self.telemetry_every_s = telemetry_every_s
        """Telemetry this often (real seconds at the market's pace) besides at each change, for a live view."""
        self.mandate = Mandate(profile, charter)
        self.dispatch = Dispatch()
        self.inbox = Inbox(hub, self.mailbox, self.dispatch)
        self.outbox = Outbox(self.id, identity, hub, self.clock, on_event=on_event)
        self.book = ContractBook()
        self.diary = Diary(self.id, memory, self.clock, self.stats)
        self.holding = Holding(self.id, self.operations, self.outbox, self.clock)
        self.bidder = Bidder(machine_id=self.id, mandate=self.mandate, clock=self.clock, mailbox=self.mailbox, stats=self.stats,
                             book=self.book, outbox=self.outbox, inbox=self.inbox, diary=self.diary, memory=memory, market=self.market,
                             status=self.status, agent=agent, loop=loop, deps=self.deps, held_by=lambda: self.holding.held_by,
                             forget=self._forget, auto_bid=auto_bid,
                             owners=JobOwners(lambda account: settlement.account_owner(ledger, account)) if ledger is not None else None)
        self.offers = Offers(machine_id=self.id, mandate=self.mandate, clock=self.clock, mailbox=self.mailbox, stats=self.stats,
                             book=self.book, outbox=self.outbox, pricer=self.bidder.pricer, held_by=lambda: self.holding.held_by,
                             enabled=offers)
        self.haggler = Haggler(machine_id=self.id, identity=identity, mandate=self.mandate, clock=self.clock, mailbox=self.mailbox,
                               stats=self.stats, book=self.book, outbox=self.outbox, pricer=self.bidder.pricer,
                               opening=self.bidder.bid_price, stakeholder=self._stakeholder, agent=agent, loop=loop, deps=self.deps)
        self.workshop = Workshop(machine_id=self.id, mandate=self.mandate, clock=self.clock, mailbox=self.mailbox, stats=self.stats,
                                 book=self.book, outbox=self.outbox, inbox=self.inbox, diary=self.diary, bidder=self.bidder,
                                 holding=self.holding, driver=self.driver, ledger=ledger, ops=self.operations, flows=self.flows,
                                 market=self.market, offers=self.offers, haggler=self.haggler, forget=self._forget, tick_s=tick_s, progress_steps=progress_steps)
        self.control = ControlDesk(machine_id=self.id, ops=self.operations, driver=self.driver, clock=self.clock, book=self.book,
                                   runner=self.workshop.runner, holding=self.holding, outbox=self.outbox, diary=self.diary,
                                   on_handback=self.workshop.maybe_start)
        (self.dispatch.on(CallForProposals, self.bidder.on_cfp).on(Award, self.workshop.on_award).on(Release, self.workshop.on_release)
         .on(Haggle, self.haggler.on_haggle)
         .on(JobClosed, self.workshop.on_closed).on(JobEvent, self.workshop.on_event)
         .on(GovernanceNotice, self._on_governance).on(ControlCommand, self.control.on_command))
        self.inbox.tune(self.mandate.cfp_topics(), live=False)
        self._started = self._stopped = False

    # -- who the machine is now --------------------------------------------------------------------

    @property
    def profile(self) -> MachineProfile:
        return self.mandate.profile

    @property
    def standing(self) -> StandingStatus:
        return self.mandate.standing

    @property
    def held_by(self) -> str | None:
        """The operator in control of the machine, or None when its agent runs it."""
        return self.holding.held_by

    @property
    def actions(self) -> deque[tuple[float, str, str]]:
        return self.outbox.actions

    @property
    def busy(self) -> bool:
        """Working on (or charging for) a job."""
        return self.book.running is not None

    def presence(self, state: Literal["online", "offline"]) -> bytes:
        """The signed presence notice; the offline one is what the broker sends as our last will.
        A parked machine is online and serves no territory (it stands by: see ``Mandate.cfp_topics``)."""
        p = self.profile
        territory = p.territory if self.standing == "active" else ()
        body = Presence(machine_id=p.id, state=state, session=self.session, kind=p.kind.value, region=p.region, territory=territory)
        return seal(body, self.identity, ts=self.clock.ms())

    # -- life --------------------------------------------------------------------------------------

    def start(self, connect_timeout_s: float = 10.0) -> MachineNode:
        """Join the market. A node on a hub of its own connects it with a last will saying offline
        (waiting up to ``connect_timeout_s`` for the broker); on a shared, connected hub it has none
        and says offline itself when stopped."""
        if not self.hub.connected:
            self.hub.set_will(topics.presence(self.id), self.presence("offline"))
            self.hub.connect(connect_timeout_s)
        self.mailbox.call(self._join)
        return self

    def _join(self) -> None:
        if self.governance is not None:
            self._reload_standing()
            self.inbox.listen(topics.governance(self.id))
        for topic in self.inbox.calls:
            self.inbox.listen(topic)
        self.inbox.listen(topics.control(self.id))
        self._started = True
        recover(machine_id=self.id, ops=self.operations, flows=self.flows, ledger=self.ledger, book=self.book, inbox=self.inbox,
                holding=self.holding, workshop=self.workshop)  # jobs and handoffs left open by an earlier run of this machine
        self.outbox.presence(self.presence("online"))
        if self.telemetry_every_s:
            self.mailbox.call_later(self.telemetry_every_s * self.clock.speed, self._telemetry_tick)

    def listening(self) -> bool:
        """The broker has confirmed the node's subscriptions (its control topic and its calls), so a
        command or call sent now reaches it. A process reports itself online only after this."""
        return self._started and all(self.hub.listens(t) for t in (topics.control(self.id), *self.inbox.calls))

    def _telemetry_tick(self) -> None:
        if not self._started or not self.telemetry_every_s:
            return
        self.outbox.telemetry(self.driver.telemetry(), keep=False)
        self.mailbox.call_later(self.telemetry_every_s * self.clock.speed, self._telemetry_tick)

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
        self.mandate.standing = "retired"  # the mailbox is closed: nothing else touches the node now

    def _leave(self) -> None:
        if self.governance is not None:
            self.inbox.leave(topics.governance(self.id))
        for topic in self.inbox.calls:
            self.inbox.leave(topic)
        self.inbox.leave(topics.control(self.id))
        self._started = False
        for job_id in self.book.job_ids():
            self._forget(job_id)
        self.diary.flush_demand()
        self.book.release()
        self.outbox.presence(self.presence("offline"))

    def _forget(self, job_id: str) -> None:
        """Stop following a job: the requester closed it, or the machine is leaving."""
        self.bidder.drop(job_id)
        self.haggler.forget(job_id)
        followed = self.book.drop(job_id)
        if followed is None:
            return
        if followed.forget is not None:
            followed.forget.cancel()
        self.inbox.leave(topics.award(job_id))
        if followed.contract is not None:
            followed.contract.timers.cancel()
            self.inbox.leave(topics.events(job_id))

    def _stakeholder(self, job_id: str) -> bool:
        """Whether the account that owns ``job_id`` holds shares in this machine."""
        owner = owner_of(job_id)
        return bool(owner) and self.ledger is not None and self.ledger.cap_table(self.id).get(owner, 0) > 0

    # -- what the holders decided ------------------------------------------------------------------

    def _on_governance(self, env: Envelope, body: GovernanceNotice) -> None:
        if body.machine_id == self.id and body.state == "executed":
            self._reload_standing()

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
        charter = self.governance.charter(self.id)
        self.mandate.apply(standing, standing.retain_bps if standing.retain_bps is not None else charter.retain_bps, charter)
        self.inbox.tune(self.mandate.cfp_topics(), live=self._started)
        if self._started and standing.status != "retired":
            self.outbox.presence(self.presence("online"))

    # -- the machine as its tools and its owners see it; callable from any thread ----------------------

    def status(self, deadline_at: int | None = None) -> MachineStatus:
        """Wear, battery, position and the work ahead of a job due at ``deadline_at`` (node thread)."""
        return self.book.status(self.profile, self.driver.telemetry(), deadline_at)

    def decide(self, job: JobSpec, deadline_at: int, memory: MemorySignal | None = None) -> Decision:
        return self.bidder.pricer.decide(job, deadline_at, memory)

    def deps(self, actor: str = "agent") -> MachineDeps:
        return MachineDeps(machine=self, ledger=self.ledger, hub=self.hub, memory=self.memory, governance=self.governance,
                           identity=self.identity, actor=actor, clock=self.clock)

    def snapshot(self) -> MachineSnapshot:
        """The machine's state to save, so stakeholders can ask about it after it stops."""

        def take() -> MachineSnapshot:
            readings = list(self.outbox.readings)
            now = self.driver.telemetry()
            if not readings or readings[-1] != now:
                readings.append(now)
            return MachineSnapshot(profile=self.profile, at=self.clock.now(), telemetry=readings[-HISTORY:],
                                   bids=[r.model_copy() for r in self.bidder.history], queue_len=self.book.active_count())

        return self.mailbox.call(take)

    def work_in_hand(self) -> int:
        return self.mailbox.call(self.workshop.work_in_hand)

    def margin(self) -> int:
        """Revenue less variable costs booked so far."""
        return self.mailbox.call(lambda: self.stats.revenue - self.stats.costs)

    @property
    def maintenance_due(self) -> bool:
        """Serviced, and waiting for the job in hand to end to reset its wear."""
        return self.mailbox.call(lambda: self.workshop.maintenance_due)

    def maintained(self) -> None:
        """The maintenance job was done: wear back to zero (a busy machine, once its job ends)."""
        self.mailbox.call(self.workshop.maintain)

    def job_queue(self) -> list[QueuedContract]:
        """The jobs in hand, in the order they will run."""
        return self.mailbox.call(self.book.queue)

    def telemetry(self) -> Telemetry | None:
        return self.mailbox.call(self.driver.telemetry)

    def telemetry_history(self) -> list[Telemetry]:
        return self.mailbox.call(lambda: list(self.outbox.readings))

    def machine_status(self) -> MachineStatus:
        return self.mailbox.call(self.status)

    def open_call(self, job_id: str) -> OpenCall | None:
        return self.mailbox.call(self.bidder.calls.get, job_id)

    def open_calls(self) -> list[OpenCall]:
        return self.mailbox.call(lambda: list(self.bidder.calls.values()))

    def rule_decision(self, call: OpenCall) -> Decision:
        return self.mailbox.call(self.bidder.pricer.rule_decision, call)

    def bid_history(self) -> list[BidRecord]:
        return self.mailbox.call(lambda: [r.model_copy() for r in self.bidder.history])

    def submit_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        self.mailbox.call(self.bidder.manual_bid, job_id, price, eta_h, reason, path)

    def decline_call(self, job_id: str, reason: str) -> None:
        self.mailbox.call(self.bidder.manual_decline, job_id, reason)
