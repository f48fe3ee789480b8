"""The requester agent: the buyer's side of the contract net, on its own mailbox thread.

For each job: announce a call for proposals, collect signed bids until the bid deadline (or until
every machine online for the job has answered), rank them (price, then finish time), award the
best, wait for acceptance or move to the runner-up, fund escrow, follow the work, and pay. When
the contractor drops out (its last will says offline, or it reports failure) the next bidder is
asked to take over at the same price: the escrow stays, so the requester is charged once.

An award is provisional until the job starts. A machine that would finish a job sooner than the one
holding it may offer to take it over at the price in escrow; the requester asks the holder to release
it, and awards the offerer only once the holder says it has (a holder that has started keeps it), so
the job never has two holders and the escrow never moves.

A requester may haggle (``RequesterConfig.haggle``, or a strategy per job): its call then allows
negotiation, and when the bids close it counters the best bidders (``agents.negotiation``) until a
deal, the round limit or the negotiation's close, and awards the deal — or the best standing offer.

A job always ends in exactly one of three outcomes, announced with a ``closed`` message: ``paid``
(done and paid), ``refunded`` (funded, not done), ``expired`` (never contracted).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.journal import Journal, RunRecord
from agents.negotiation import Negotiation
from core.clock import Timeline
from core.errors import EnvelopeRejected, LedgerError
from core.mailbox import Mailbox, Timer
from hub import topics
from hub.dispatch import Dispatch
from hub.envelope import Envelope
from hub.jobids import owned
from hub.messages import (
    Award,
    Bid,
    Body,
    CallForProposals,
    Haggle,
    HaggleTerms,
    JobClosed,
    JobEvent,
    Offer,
    Presence,
    Release,
    SealedBid,
)
from hub.transport import Hub
from ledger import Identity, Ledger, settlement
from machines.job import JobSpec
from pricing.haggle import HaggleRules, RequesterStrategy

__all__ = ["JobOutcome", "Requester", "RequesterConfig"]

log = logging.getLogger("tamc.requester")

Outcome = Literal["paid", "refunded", "expired"]


class RequesterConfig(BaseModel):
    bid_window_s: float = Field(default=120.0, gt=0)
    """Seconds of market time machines have to bid."""
    accept_window_s: float = Field(default=180.0, gt=0)
    """Seconds of market time the winner has to accept before the runner-up is asked."""
    grace_h: float = Field(default=0.25, ge=0)
    """Market hours past the deadline before an unfinished job is refunded."""
    moves: bool = True
    """Take offers to move a job that has not started to a machine that finishes it sooner (False:
    every award is final once accepted, the contract net of award at arrival)."""
    move_gain_h: float = Field(default=0.25, ge=0)
    """An offer must finish at least this many market hours sooner than the holder would."""
    rejoin_s: float = Field(default=0.0, ge=0)
    """Seconds of market time a holder that went offline has to come back before its job goes to the
    next bidder (0: at once). Over a real network, a cut or a quick restart should not move a job
    that is under way: two machines would work it."""
    haggle: RequesterStrategy | None = None
    """Haggle over every job by this strategy (``post`` may give a job its own); None: award the best bid."""
    price_tick: int = Field(default=10_000, gt=0)
    """Counters are whole multiples of this (0.01 unit)."""


class JobOutcome(BaseModel):
    """How a job ended, for the requester and for the market's metrics."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kind: str
    region: str
    outcome: Outcome
    machine_id: str | None = None
    price: int | None = None
    value: int = 0
    """What the job was worth to the requester (private: never sent to machines)."""
    bids: int = 0
    """Bids ranked (closed early, a standby bid that came in meanwhile is not one: it did not count)."""
    awards: int = 0
    takeovers: int = 0
    """Awards made after a funded contractor dropped out (a declined takeover offer counts too)."""
    moves: int = 0
    """Times the job moved, before it started, to a machine that offered to finish it sooner."""
    accept_latency_ms: float | None = None
    """CFP sent → first acceptance received, market milliseconds."""
    reason: str = ""
    haggled: bool = False
    """The requester countered bids before it awarded."""
    best_bid: int | None = None
    """The best sealed bid, before any negotiation: what the job would have cost without haggling."""
    haggle_messages: int = 0
    """Negotiation messages exchanged (counters and answers)."""
    deal: bool = False
    """A bidder agreed to the requester's terms (else the best standing offer was awarded)."""
    deadline_at: int | None = None
    """The deadline the contract was made for, where a negotiation moved it (epoch ms)."""


@dataclass
class _Run:
    job: JobSpec
    reserve: int
    value: int
    cfp: CallForProposals
    posted: int
    """Market ms when the call went out."""
    bids: dict[str, Bid] = field(default_factory=dict)
    ranked: list[Bid] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)
    state: Literal["bidding", "haggling", "awarding", "contracted", "closed"] = "bidding"
    attempt: int = 0
    machine: str | None = None
    machine_did: str | None = None
    price: int | None = None
    funded: bool = False
    escrow_posting: str | None = None
    started: bool = False
    held: bool = False
    """The contractor handed the job to a person: it keeps the job even if it drops offline meanwhile."""
    takeovers: int = 0
    finish_at: int | None = None
    """Market ms at which the holder said it would be done (its bid's or its offer's eta)."""
    offers: dict[str, tuple[int, Offer]] = field(default_factory=dict)
    """Machine id -> (market ms received, its latest offer to take the job over)."""
    moving: Offer | None = None
    """The offer a ``release`` was sent for, until the holder answers."""
    moves: int = 0
    """Releases asked for; the last one's number names it."""
    moved: int = 0
    """Releases granted."""
    accept_latency_ms: float | None = None
    reminded: set[str] = field(default_factory=set)
    """Machines told again (``_remind``) that the job is no longer theirs."""
    heard: int = 0
    """Market ms of the holder's latest event on the job (it is alive, whatever its presence said)."""
    strategy: RequesterStrategy | None = None
    negotiation: Negotiation | None = None
    agreed_deadline: int | None = None
    """The deadline of the machine awarded now, where a negotiation moved it from the call's."""
    timer: Timer | None = None
    watchdog: Timer | None = None

    @property
    def deadline_at(self) -> int:
        return self.agreed_deadline if self.agreed_deadline is not None else self.cfp.deadline_at

    def cancel(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def record(self, awards_sent: list[str]) -> RunRecord:
        """What the journal keeps of this job (its timers are set again on resume)."""
        return RunRecord(job=self.job, reserve=self.reserve, value=self.value, cfp=self.cfp, posted=self.posted,
                         bids=list(self.bids.values()), ranked=self.ranked, excluded=sorted(self.excluded), state=self.state,
                         attempt=self.attempt, machine=self.machine, machine_did=self.machine_did, price=self.price,
                         funded=self.funded, escrow_posting=self.escrow_posting, started=self.started, held=self.held,
                         takeovers=self.takeovers, finish_at=self.finish_at, moving=self.moving, moves=self.moves,
                         moved=self.moved, accept_latency_ms=self.accept_latency_ms, awards_sent=awards_sent,
                         strategy=self.strategy, negotiation=self.negotiation, deadline_at=self.agreed_deadline)

    @classmethod
    def of(cls, r: RunRecord) -> _Run:
        return cls(job=r.job, reserve=r.reserve, value=r.value, cfp=r.cfp, posted=r.posted,
                   bids={b.machine_id: b for b in r.bids}, ranked=list(r.ranked), excluded=set(r.excluded), state=r.state,
                   attempt=r.attempt, machine=r.machine, machine_did=r.machine_did, price=r.price, funded=r.funded,
                   escrow_posting=r.escrow_posting, started=r.started, held=r.held, takeovers=r.takeovers,
                   finish_at=r.finish_at, moving=r.moving, moves=r.moves, moved=r.moved, accept_latency_ms=r.accept_latency_ms,
                   strategy=r.strategy, negotiation=r.negotiation, agreed_deadline=r.deadline_at)


class Requester:
    def __init__(
        self,
        identity: Identity,
        hub: Hub,
        ledger: Ledger,
        wallet: str,
        *,
        config: RequesterConfig | None = None,
        mailbox: Mailbox | None = None,
        clock: Timeline | None = None,
        on_outcome: Callable[[JobOutcome], None] | None = None,
        owner: str | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.identity = identity
        self.owner = owner or wallet
        """The ledger account (owned by ``identity``) whose namespace this requester's job ids are in (``hub.jobids``)."""
        self.hub = hub
        self.ledger = ledger
        self.wallet = wallet
        self.config = config or RequesterConfig()
        self.clock: Timeline = clock or hub.clock
        """What its windows, deadlines and timestamps run on (its hub's clock unless told)."""
        self.mailbox = mailbox or Mailbox(f"requester-{wallet}", clock=self.clock)
        self._dispatch = (Dispatch().on(SealedBid, self._on_sealed).on(JobEvent, self._on_event).on(Offer, self._on_offer)
                          .on(Presence, self._on_presence).on(Haggle, self._on_haggle))
        self._own_mailbox = mailbox is None
        self.on_outcome = on_outcome
        self.outcomes: dict[str, JobOutcome] = {}
        self.awards_sent: dict[str, list[str]] = {}
        """job id -> machine ids awarded, in order (for audits: never two live at once)."""
        self._runs: dict[str, _Run] = {}
        self._online: dict[str, Presence] = {}
        self._registry: dict[str, str] = {}
        self.dropped: Counter[str] = Counter()
        """What this requester refused after its hub accepted it, by reason (``unsealable``: a bid not sealed to it)."""
        self.journal = journal
        """Where its open jobs are kept, so that a restarted requester resumes them (``resume``); None: in memory only."""
        self._dirty: set[str] = set()
        self.resumed = 0
        """Jobs taken up again from the journal by ``resume``."""

    def start(self) -> Requester:
        self.hub.subscribe(topics.ALL_PRESENCE, self._deliver)
        if self.journal is not None:
            self.mailbox.post(self.resume)
        return self

    def resume(self) -> None:
        """Take up every open job the journal holds, each where it stood: bidding goes on to its
        deadline, an award or a ``funded`` that may not have gone out is sent again (the machine
        answers a repeat as it did the first), and a job the ledger shows paid or refunded is closed."""
        assert self.journal is not None
        for record in self.journal.load():
            if record.job.id in self._runs:
                continue
            run = _Run.of(record)
            self._runs[run.job.id] = run
            self.awards_sent[run.job.id] = list(record.awards_sent)
            self.resumed += 1
            self._follow(run)
            now = self.clock.ms()
            grace_ms = self.config.grace_h * 3_600_000
            run.watchdog = self._later(max(run.deadline_at + grace_ms - now, 0) / 1000, self._overdue, run)
            log.info("job=%s resumed in state %s (machine %s)", run.job.id, run.state, run.machine)
            if run.state == "bidding":
                if now < run.cfp.bid_deadline:
                    self._publish(topics.call(run.job), run.cfp)  # in case it never went out; machines ignore a repeat
                run.timer = self._later(max(run.cfp.bid_deadline - now, 0) / 1000, self._close_bidding, run)
            elif run.state == "haggling":
                assert run.cfp.haggle is not None
                run.timer = self._later(max(run.cfp.haggle.close_at - now, 0) / 1000, self._end_haggle, run)
            elif run.state == "awarding":
                self._award_next(run)
            elif not run.funded:
                self._fund(run)
            else:
                self._settled_meanwhile(run)
            self._flush()

    def _settled_meanwhile(self, run: _Run) -> None:
        """A funded job: close it if the ledger says it ended while we were away, else say ``funded``
        again and wait for the machine."""
        assert run.machine is not None
        escrow = self.ledger.escrow(run.job.id)
        if escrow.state.value == "released":
            posting = self.ledger.posting(f"release:{run.job.id}")
            self._publish(topics.events(run.job.id), JobEvent(job_id=run.job.id, machine_id=run.machine, kind="paid",
                                                              posting=posting.id if posting else None))
            self._close(run, "paid", posting=posting.id if posting else None)
        elif escrow.state.value == "refunded":
            self._close(run, "refunded", reason="refunded while the requester was away")
        else:
            self._fund(run)

    def stop(self) -> None:
        self.hub.unsubscribe(topics.ALL_PRESENCE, self._deliver)
        if self._own_mailbox:
            self.mailbox.close()

    @property
    def open_jobs(self) -> int:
        return len(self._runs)

    def job_id(self, local: str) -> str:
        """The id a job posted as ``local`` goes out under: in this requester's namespace."""
        return owned(self.owner, local)

    def post(self, job: JobSpec, *, reserve: int, value: int = 0, after_s: float = 0.0,
             haggle: RequesterStrategy | None = None) -> str:
        """Put a job out to tender (from any thread), now or ``after_s`` seconds of market time from
        now; its ``JobOutcome`` arrives via ``on_outcome``. Returns the job's id: in this requester's
        namespace (``job_id``), as every machine and the outcome know it. ``haggle``: negotiate this
        job by that strategy (default: the config's)."""
        job_id = self.job_id(job.id)
        if job_id != job.id:
            job = job.model_copy(update={"id": job_id})
        self.mailbox.call_later(after_s, self._post, job, reserve, value, haggle or self.config.haggle)
        return job_id

    # -- receiving ---------------------------------------------------------------------------

    def _deliver(self, topic: str, env: Envelope) -> None:
        self.mailbox.post(self._handle, env)

    def _handle(self, env: Envelope) -> None:
        self._dispatch(env)
        if self.journal is None:
            return
        body = env.body
        if isinstance(body, Presence):
            self._dirty.update(j for j, r in self._runs.items() if r.machine == body.machine_id)
        elif (job_id := getattr(body, "job_id", None)) in self._runs:
            self._dirty.add(job_id)
        self._flush()

    def _later(self, delay_s: float, fn: Callable[..., None], run: _Run, *args: object) -> Timer:
        """A timer on the mailbox for ``run``'s step; the journal keeps what the step changed."""
        def step() -> None:
            fn(run, *args)
            self._dirty.add(run.job.id)
            self._flush()
        return self.mailbox.call_later(delay_s, step)

    def _flush(self) -> None:
        if self.journal is None:
            self._dirty.clear()
            return
        while self._dirty:
            run = self._runs.get(self._dirty.pop())
            if run is not None:
                self.journal.save(run.record(self.awards_sent.get(run.job.id, [])))

    def _is_machine(self, machine_id: str, did: str) -> bool:
        """A bid counts only if signed by the did the machine registered in the ledger with."""
        if self._registry.get(machine_id) == did:
            return True
        owner = settlement.machine_owner(self.ledger, machine_id)
        if owner is not None:
            self._registry[machine_id] = owner
        return owner == did

    # -- tender ------------------------------------------------------------------------------

    def _post(self, job: JobSpec, reserve: int, value: int, strategy: RequesterStrategy | None = None) -> None:
        if job.id in self._runs or job.id in self.outcomes or (self.journal is not None and self.journal.knows(job.id)):
            log.warning("job=%s posted twice; the second post is ignored", job.id)
            return
        now = self.clock.ms()
        c = self.config
        bid_deadline = now + round(c.bid_window_s * 1000)
        cfp = CallForProposals(
            job=job, reserve=reserve, speed=self.clock.speed, bid_deadline=bid_deadline,
            deadline_at=now + round(job.deadline_h * 3_600_000),
            haggle=HaggleRules(rounds=strategy.rounds, close_at=bid_deadline + round(strategy.window_s * 1000)) if strategy else None,
        )
        run = _Run(job=job, reserve=reserve, value=value, cfp=cfp, posted=now, strategy=strategy)
        self._runs[job.id] = run
        self._dirty.add(job.id)
        self._flush()  # on disk before it is on the wire: a restart finds every job it may have announced
        self._follow(run)
        self._publish(topics.call(job), cfp)
        run.timer = self._later(c.bid_window_s, self._close_bidding, run)
        run.watchdog = self._later((cfp.deadline_at - now) / 1000 + c.grace_h * 3600, self._overdue, run)

    def _follow(self, run: _Run) -> None:
        job_id = run.job.id
        if run.state in ("bidding", "haggling"):
            self.hub.subscribe(topics.bids(job_id), self._deliver)
        self.hub.subscribe(topics.events(job_id), self._deliver)
        if self.config.moves:
            self.hub.subscribe(topics.offers(job_id), self._deliver)

    def _serves(self, machine_id: str, job: JobSpec) -> bool:
        """Online now for the job's kind and region (a parked machine serves no territory)."""
        p = self._online.get(machine_id)
        return p is not None and p.kind == job.kind.value and job.region in p.territory

    def _eligible(self, job: JobSpec) -> int:
        return sum(1 for m in self._online if self._serves(m, job))

    def _on_sealed(self, env: Envelope, sealed: SealedBid) -> None:
        if sealed.job_id not in self._runs:
            return  # another requester's job (its bids share the family, not the key)
        try:
            bid = sealed.open(self.identity)
        except EnvelopeRejected as exc:
            self.dropped[exc.reason] += 1
            log.info("job=%s bid from %s dropped: %s", sealed.job_id, sealed.machine_id, exc)
            return
        self._on_bid(env, bid)

    def _on_bid(self, env: Envelope, bid: Bid) -> None:
        run = self._runs.get(bid.job_id)
        if run is None or run.state != "bidding" or self.clock.ms() > run.cfp.bid_deadline:
            return
        if bid.price > run.reserve or not self._is_machine(bid.machine_id, env.sender):
            log.info("job=%s bid from %s refused (over reserve or unregistered signer)", bid.job_id, bid.machine_id)
            return
        run.bids[bid.machine_id] = bid
        serving = [b for b in run.bids.values() if self._serves(b.machine_id, run.job)]
        eligible = self._eligible(run.job)
        if eligible and len(serving) >= eligible:  # everyone serving the job has answered: no need to wait
            self._close_bidding(run, early=True)

    def _close_bidding(self, run: _Run, *, early: bool = False) -> None:
        """Rank the bids and award the best. Closed early, only the bids of machines serving the job
        count: a machine standing by (parked) is waited for by nobody, so whether its bid came before
        the others must not decide the award."""
        if run.state != "bidding":
            return
        run.cancel()
        bids = [b for b in run.bids.values() if not early or self._serves(b.machine_id, run.job)]
        run.ranked = sorted(bids, key=lambda b: (b.price, b.eta_h, b.machine_id))
        if run.strategy is not None and run.cfp.haggle is not None and run.ranked and self._haggle(run):
            return
        self.hub.unsubscribe(topics.bids(run.job.id), self._deliver)
        run.state = "awarding"
        self._award_next(run)

    # -- haggling ----------------------------------------------------------------------------

    def _haggle(self, run: _Run) -> bool:
        """Counter the best bids (``agents.negotiation``); False when there is nothing to haggle over."""
        assert run.strategy is not None and run.cfp.haggle is not None
        negotiation, counters = Negotiation.start(run.strategy, run.cfp.haggle, run.cfp.deadline_at, run.ranked, self.config.price_tick)
        if not counters:
            return False
        run.negotiation, run.state = negotiation, "haggling"
        for terms in counters:
            self._counter(run, terms)
        run.timer = self._later(max(run.cfp.haggle.close_at - self.clock.ms(), 0) / 1000, self._end_haggle, run)
        return True

    def _counter(self, run: _Run, terms: HaggleTerms) -> None:
        did = self._registry.get(terms.machine_id) or settlement.machine_owner(self.ledger, terms.machine_id)
        assert did is not None  # a bid counts only from a machine registered in the ledger
        self._publish(topics.award(run.job.id), Haggle.of(terms, did))

    def _on_haggle(self, env: Envelope, body: Haggle) -> None:
        """A machine's answer to our counter: dropped unless it is the round we wait for, in time, from that machine."""
        run = self._runs.get(body.job_id)
        if run is None:
            return  # another requester's job
        if not self._is_machine(body.machine_id, env.sender):
            self.dropped["forged"] += 1
            return
        n = run.negotiation
        if run.state != "haggling" or n is None or run.cfp.haggle is None or self.clock.ms() > run.cfp.haggle.close_at:
            self.dropped["late"] += 1
            return
        if not n.expects(body.machine_id, body.round):
            self.dropped["out_of_turn"] += 1
            return
        try:
            terms = body.open(self.identity)
        except EnvelopeRejected as exc:
            self.dropped[exc.reason] += 1
            return
        n.receive(terms)
        if not n.ready:
            return
        for counter in n.step():
            self._counter(run, counter)
        if n.settled:
            self._end_haggle(run)

    def _end_haggle(self, run: _Run) -> None:
        """The deal, or at the close the best standing offer, is awarded; the rest stand behind it."""
        if run.state != "haggling" or run.negotiation is None:
            return
        run.cancel()
        self.hub.unsubscribe(topics.bids(run.job.id), self._deliver)
        run.ranked = run.negotiation.ranked(run.ranked)
        run.state = "awarding"
        self._award_next(run)

    def _award_next(self, run: _Run, *, moved: bool = False) -> None:
        takeover = run.funded
        candidates = [b for b in run.ranked if b.machine_id not in run.excluded]
        if not candidates:
            if run.funded:
                self._close(run, "refunded", reason="no machine left to take the job over")
            else:
                self._close(run, "expired", reason="no bids" if not run.bids else "no bidder accepted")
            return
        bid = candidates[0]
        run.attempt += 1
        run.state = "awarding"
        run.machine, run.machine_did = bid.machine_id, self._registry.get(bid.machine_id)
        price = run.price if takeover and run.price is not None else bid.price
        run.price = price
        if not takeover:
            self._agree_deadline(run, run.negotiation.deadline_for(bid.machine_id) if run.negotiation else run.cfp.deadline_at)
        now = self.clock.ms()
        run.finish_at = now + round(bid.eta_h * 3_600_000)
        accept_by = now + round(self.config.accept_window_s * 1000)
        self.awards_sent.setdefault(run.job.id, []).append(bid.machine_id)
        if takeover and not moved:
            run.takeovers += 1
        self._publish(topics.award(run.job.id), Award(
            job_id=run.job.id, machine_id=bid.machine_id, price=price, accept_by=accept_by,
            attempt=run.attempt, takeover=takeover, finish_at=run.finish_at,
            deadline_at=run.agreed_deadline,
        ))
        run.timer = self._later(self.config.accept_window_s, self._accept_timeout, run, run.attempt)

    def _agree_deadline(self, run: _Run, deadline_at: int) -> None:
        """The contract's deadline is the one agreed with the machine awarded: the watchdog follows it."""
        agreed = deadline_at if deadline_at != run.cfp.deadline_at else None
        if agreed == run.agreed_deadline:
            return
        run.agreed_deadline = agreed
        if run.watchdog:
            run.watchdog.cancel()
        grace_s = self.config.grace_h * 3600
        run.watchdog = self._later(max(run.deadline_at - self.clock.ms(), 0) / 1000 + grace_s, self._overdue, run)

    def _accept_timeout(self, run: _Run, attempt: int) -> None:
        if run.state == "awarding" and run.attempt == attempt and run.machine:
            log.info("job=%s machine=%s did not accept in time; asking the next bidder", run.job.id, run.machine)
            run.excluded.add(run.machine)
            self._award_next(run)

    # -- the contract ------------------------------------------------------------------------

    def _on_event(self, env: Envelope, event: JobEvent) -> None:
        run = self._runs.get(event.job_id)
        if (run is not None and run.state == "contracted" and event.machine_id != run.machine and event.kind in ("started", "progress")
                and event.machine_id in self.awards_sent.get(run.job.id, ()) and self._is_machine(event.machine_id, env.sender)):
            if event.machine_id not in run.reminded:
                run.reminded.add(event.machine_id)
                self._remind(run, event.machine_id)
            return
        if run is None or run.state == "closed" or event.machine_id != run.machine or env.sender != run.machine_did:
            return  # not the machine holding the job now (a late or replaced one), or not signed by it
        run.heard = self.clock.ms()
        if event.kind == "accepted" and run.state == "awarding":
            run.cancel()
            run.state = "contracted"
            if run.accept_latency_ms is None:
                run.accept_latency_ms = float(self.clock.ms() - run.posted)
            self._fund(run)
        elif event.kind == "declined" and run.state == "awarding":
            run.cancel()
            run.excluded.add(event.machine_id)
            self._award_next(run)
        elif event.kind in ("started", "progress"):
            run.started = True
        elif event.kind in ("released", "kept") and run.moving is not None and event.move == run.moves:
            self._moved(run, event.kind == "released")
        elif event.kind in ("handoff", "resumed"):
            run.held = event.kind == "handoff"
        elif event.kind == "aborted" and run.state == "contracted":
            self._close(run, "refunded" if run.funded else "expired", reason=f"aborted by the machine's operator: {event.detail}")
        elif event.kind == "failed" and run.state == "contracted":
            run.held = False
            self._drop_contractor(run, f"reported failure: {event.detail}")
        elif event.kind == "done" and run.state == "contracted" and run.funded:
            self._pay(run)

    def _remind(self, run: _Run, stale: str) -> None:
        """A machine we took the job from (it went away) works on it still: say again who holds it
        now, as a takeover award, which tells it to stop (the holder answers it as a repeat)."""
        assert run.machine is not None and run.price is not None
        log.warning("job=%s machine=%s still works on it; %s holds it now", run.job.id, stale, run.machine)
        self._publish(topics.award(run.job.id), Award(
            job_id=run.job.id, machine_id=run.machine, price=run.price, accept_by=self.clock.ms(), attempt=run.attempt,
            takeover=True, finish_at=run.finish_at))

    def _fund(self, run: _Run) -> None:
        assert run.machine is not None and run.price is not None
        if not run.funded:  # a takeover finds the escrow already holding the price
            try:
                run.escrow_posting = settlement.fund_job(self.ledger, run.job.id, self.wallet, run.price,
                                                         expires_at=self._expiry(run))
            except LedgerError as exc:
                log.warning("job=%s cannot be funded: %s", run.job.id, exc)
                self._close(run, "expired", reason=f"requester could not fund it: {exc}")
                return
            run.funded = True
        self._publish(topics.events(run.job.id), JobEvent(
            job_id=run.job.id, machine_id=run.machine, kind="funded", posting=run.escrow_posting))
        self._consider_moves(run)

    def _expiry(self, run: _Run) -> datetime:
        """When the escrow may be refunded by anyone: the deadline and the grace after which this
        requester refunds it itself (so a requester that never comes back strands no money)."""
        return datetime.fromtimestamp(run.deadline_at / 1000 + self.config.grace_h * 3600, UTC)

    def _pay(self, run: _Run) -> None:
        assert run.machine is not None
        posting = settlement.pay_job(self.ledger, run.job.id, run.machine)
        self._publish(topics.events(run.job.id), JobEvent(job_id=run.job.id, machine_id=run.machine, kind="paid", posting=posting))
        self._close(run, "paid", posting=posting)

    def _drop_contractor(self, run: _Run, why: str) -> None:
        log.info("job=%s machine=%s dropped out (%s); runner-up takes over", run.job.id, run.machine, why)
        if run.machine:
            run.excluded.add(run.machine)
        run.started = False
        run.moving = None
        run.cancel()
        self._award_next(run)

    # -- moving a job that has not started -----------------------------------------------------------

    def _on_offer(self, env: Envelope, offer: Offer) -> None:
        """Keep a registered machine's offer (its latest) and see whether the job should move now."""
        run = self._runs.get(offer.job_id)
        if run is None or run.state == "closed" or not self._is_machine(offer.machine_id, env.sender):
            return
        run.offers[offer.machine_id] = (self.clock.ms(), offer)
        self._consider_moves(run)

    def _consider_moves(self, run: _Run) -> None:
        """Ask the holder to release the job for the offer that finishes it soonest, if that is sooner
        than the holder by ``move_gain_h`` and within the deadline. Only a funded job that has not
        started, is not in a person's hands and has no release out can move; an offer counts for the
        holder it names, from a machine serving the job's kind and region now, for an accept window."""
        if (not self.config.moves or run.state != "contracted" or not run.funded or run.started or run.held
                or run.moving is not None or run.finish_at is None):
            return
        now = self.clock.ms()
        window = round(self.config.accept_window_s * 1000)
        best: tuple[int, Offer] | None = None
        for heard, offer in run.offers.values():
            seen = self._online.get(offer.machine_id)
            if (now - heard > window or offer.holder != run.machine or offer.machine_id == run.machine or offer.machine_id in run.excluded
                    or seen is None or seen.kind != run.job.kind.value or run.job.region not in seen.territory):
                continue
            finish = heard + round(offer.eta_h * 3_600_000)
            if finish <= run.deadline_at and (best is None or finish < best[0]):
                best = (finish, offer)
        if best is None or best[0] > run.finish_at - self.config.move_gain_h * 3_600_000:
            return
        finish, offer = best
        assert run.machine is not None
        run.moving = offer
        run.moves += 1
        log.info("job=%s offer from %s finishes %.2f h sooner than %s; asking it to release the job", run.job.id,
                 offer.machine_id, (run.finish_at - finish) / 3_600_000, run.machine)
        self._publish(topics.award(run.job.id), Release(job_id=run.job.id, machine_id=run.machine, to_machine=offer.machine_id,
                                                        move=run.moves))
        run.timer = self._later(self.config.accept_window_s, self._release_unanswered, run, run.moves)

    def _moved(self, run: _Run, released: bool) -> None:
        """The holder answered the release: award the offerer (the escrow stays), or keep the holder."""
        offer = run.moving
        assert offer is not None
        run.moving = None
        run.cancel()
        if not released:
            run.started = True  # it keeps the job because it has started (or is charging to start)
            return
        run.moved += 1
        run.offers.pop(offer.machine_id, None)
        run.ranked = [Bid(job_id=run.job.id, machine_id=offer.machine_id, price=run.price or 0, eta_h=offer.eta_h,
                          reason=offer.reason)] + [b for b in run.ranked if b.machine_id != offer.machine_id]
        self._award_next(run, moved=True)

    def _release_unanswered(self, run: _Run, move: int) -> None:
        if run.moving is not None and run.moves == move:
            log.warning("job=%s holder %s did not answer the release; it keeps the job", run.job.id, run.machine)
            run.moving = None

    def _on_presence(self, env: Envelope, presence: Presence) -> None:
        if not self._is_machine(presence.machine_id, env.sender):
            return
        if presence.state == "online":
            self._online[presence.machine_id] = presence
            return
        seen = self._online.get(presence.machine_id)
        if seen is None or seen.session != presence.session:
            return  # an offline notice for an older session: the machine is back already
        del self._online[presence.machine_id]
        for run in list(self._runs.values()):
            if run.held and run.machine == presence.machine_id:
                log.info("job=%s machine=%s offline while a person holds the job; the contract stands", run.job.id, run.machine)
                continue
            if run.machine == presence.machine_id and run.state in ("awarding", "contracted"):
                if self.config.rejoin_s > 0 and run.state == "contracted":  # a cut or a restart: it may be back in a moment
                    self._later(self.config.rejoin_s, self._still_gone, run, presence.machine_id, self.clock.ms())
                    continue
                run.cancel()
                self._drop_contractor(run, "went offline")

    def _still_gone(self, run: _Run, machine: str, gone_at: int) -> None:
        """``rejoin_s`` after its holder went offline: back online (a new session), or heard from on the
        job since (its presence can come late or stale through a broker's restart), it keeps the job;
        else the job goes to the next bidder."""
        if run.state != "contracted" or run.machine != machine or run.held:
            return
        if machine in self._online or run.heard >= gone_at:
            log.info("job=%s machine=%s came back within %.0f s; it keeps the job", run.job.id, machine, self.config.rejoin_s)
            return
        run.cancel()
        self._drop_contractor(run, f"went offline and did not come back within {self.config.rejoin_s:.0f} s")

    def _overdue(self, run: _Run) -> None:
        if run.state != "closed":
            log.info("job=%s is past its deadline unfinished", run.job.id)
            if run.funded:
                self._close(run, "refunded", reason="not finished by the deadline")
            else:
                self._close(run, "expired", reason="not contracted by the deadline")

    def _close(self, run: _Run, outcome: Outcome, *, reason: str = "", posting: str | None = None) -> None:
        if outcome == "refunded":
            posting = settlement.refund_job(self.ledger, run.job.id)
        run.cancel()
        if run.watchdog:
            run.watchdog.cancel()
        run.state = "closed"
        paid = outcome == "paid"
        self._publish(topics.award(run.job.id), JobClosed(
            job_id=run.job.id, outcome=outcome, machine_id=run.machine if paid else None,
            price=run.price if paid else None, posting=posting,
        ))
        for topic in (topics.bids(run.job.id), topics.events(run.job.id), topics.offers(run.job.id)):
            self.hub.unsubscribe(topic, self._deliver)
        del self._runs[run.job.id]
        result = JobOutcome(
            job_id=run.job.id, kind=run.job.kind.value, region=run.job.region, outcome=outcome,
            machine_id=run.machine if paid else None, price=run.price if paid else None, value=run.value,
            bids=len(run.ranked), awards=run.attempt, takeovers=run.takeovers, moves=run.moved,
            accept_latency_ms=run.accept_latency_ms, reason=reason,
            haggled=run.negotiation is not None, best_bid=min((b.price for b in run.bids.values()), default=None),
            haggle_messages=len(run.negotiation.steps) if run.negotiation else 0,
            deal=run.negotiation is not None and run.negotiation.deal is not None,
            deadline_at=run.agreed_deadline,
        )
        self.outcomes[run.job.id] = result
        self._dirty.discard(run.job.id)
        if self.journal is not None:
            self.journal.close(run.job.id, result.model_dump_json())
        if self.on_outcome:
            self.on_outcome(result)

    def _publish(self, topic: str, body: Body) -> None:
        self.hub.send(topic, body, self.identity)
