"""The workshop: a won job from award to payment.

It accepts an award only if the machine can still keep the deadline at the price, releases a slot
the requester never funds, starts funded jobs earliest deadline first (a vehicle charges first),
runs each as a workflow (``JobRunner``), books it when done, frees the machine when a job is given
up or closed, and when paid settles its costs and pays the holders. Until a job starts the award is
provisional: the requester may ask the machine to release it to one that offered to finish it
sooner, and a machine with room offers for such jobs itself (``offers``). Every step checks who
sent the message: awards, releases and payments only count from the requester that posted the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agents.node.bidder import Bidder
from agents.node.book import Contract, ContractBook, ContractState, Followed, Terms
from agents.node.diary import Diary
from agents.node.effects import JobEnds
from agents.node.haggler import Haggler
from agents.node.holding import Holding
from agents.node.mandate import Mandate
from agents.node.offers import Offers
from agents.node.outbox import Inbox, Outbox
from agents.node.runner import JobRunner
from agents.node.stats import NodeStats
from agents.workflow import JobFlows
from core.clock import Timeline
from core.errors import CommandRejected, DriverError, EscrowNotFound
from core.mailbox import Mailbox
from hub import topics
from hub.envelope import Envelope
from hub.messages import Award, JobClosed, JobEvent, Release
from ledger import Ledger, settlement
from ledger.operations import Operations
from machines.driver import Driver
from machines.work import estimate
from memory.signals import wear_item
from pricing.rules import MarketContext, job_cost

__all__ = ["DONE_AGAIN_S", "FUND_WAIT_S", "Workshop"]

log = logging.getLogger("tamc.node")

FUND_WAIT_S = 10.0
"""After accepting, how long (real seconds at the market's pace) a machine keeps the slot for a
requester that has not funded."""
DONE_AGAIN_S = 30.0
"""Real seconds a machine waits to be paid for a job it said ``done`` before it looks at the ledger
and, unpaid, says ``done`` again: a ``done`` or ``paid`` lost to a broker that died, or a requester
that restarted, costs a wait, never the money."""


class Workshop:
    def __init__(self, *, machine_id: str, mandate: Mandate, clock: Timeline, mailbox: Mailbox, stats: NodeStats,
                 book: ContractBook, outbox: Outbox, inbox: Inbox, diary: Diary, bidder: Bidder, holding: Holding,
                 driver: Driver, ledger: Ledger | None, ops: Operations | None, flows: JobFlows, market: MarketContext,
                 offers: Offers, haggler: Haggler, forget: Callable[[str], None], tick_s: float = 1.0,
                 progress_steps: int = 4) -> None:
        self.machine_id = machine_id
        self.mandate = mandate
        self.clock = clock
        self.mailbox = mailbox
        self.stats = stats
        self.book = book
        self.outbox = outbox
        self.inbox = inbox
        self.diary = diary
        self.bidder = bidder
        self.holding = holding
        self.driver = driver
        self.ledger = ledger
        self.market = market
        self.offers = offers
        self.haggler = haggler
        self.forget = forget
        self.maintenance_due = False
        """Serviced while busy: wear resets when the job in hand ends."""
        self.ends = JobEnds(done=self.job_done, given_up=self.given_up, stop=self.stop_running, settle=self.settle)
        self.runner = JobRunner(machine_id=machine_id, clock=clock, mailbox=mailbox, book=book, outbox=outbox, driver=driver,
                                flows=flows, ops=ops, mandate=mandate, holding=holding, ends=self.ends,
                                confidence=bidder.confidence, tick_s=tick_s, progress_steps=progress_steps)

    # -- the award topic -------------------------------------------------------------------------

    def on_award(self, env: Envelope, body: Award) -> None:
        followed = self._from_requester(env, body.job_id)
        if followed is None:
            return
        self.bidder.note_outcome(body)
        self.offers.awarded(followed, body)
        contract = followed.contract
        if body.machine_id != self.machine_id:
            if contract and contract.state in (ContractState.ACCEPTED, ContractState.FUNDED):
                contract.move(ContractState.WITHDRAWN)  # our accept came too late; the job went to another machine
                self.stop_running(contract)
            elif contract and contract.state == ContractState.RUNNING and body.takeover:
                # the requester gave the job to another while we were away (killed, cut off, restarted):
                # it is theirs now, and two machines must never work one job
                log.warning("machine=%s job=%s taken over by %s while we were away; our run stops", self.machine_id,
                            body.job_id, body.machine_id)
                self.runner.closed(contract, "taken over")
                contract.move(ContractState.CANCELLED)
                self.stop_running(contract)
                # said aloud: the requester and anyone reading the job's history see that we let go
                self.outbox.event(body.job_id, "aborted", detail=f"taken over by {body.machine_id}: our run stopped")
            self.offers.look()
            return
        self.stats.awards += 1
        if self.holding.held_by is not None:
            return  # a person holds the machine: no accept, no decline; the requester moves on
        if contract and contract.active:
            self.outbox.event(body.job_id, "accepted", detail="repeat")  # our accept was lost; say it again
            return
        if self.clock.ms() > body.accept_by:
            return
        cfp = followed.call
        pricer = self.bidder.pricer
        deadline_at = body.deadline_at if body.deadline_at is not None and cfp.haggle is not None else cfp.deadline_at
        decision = pricer.decide(pricer.remaining(cfp.job.model_copy(update={"max_price": None}), deadline_at), deadline_at)
        least = max(decision.cost.total, self.mandate.profile.policy.price_floor) if decision.cost else None
        agreed = None if body.takeover else self.haggler.agreed(body.job_id)
        if decision.action != "bid" or least is None or body.price < least or (agreed is not None and body.price < agreed):
            why = decision.reason if decision.action != "bid" else (
                f"price {body.price} below our least {least}" if least is None or body.price < least else
                f"price {body.price} below the {agreed} we agreed")
            self.outbox.event(body.job_id, "declined", detail=why)
            return
        terms = Terms(job=cfp.job, requester=followed.requester, price=body.price, speed=cfp.speed, deadline_at=deadline_at,
                      accept_by=body.accept_by)
        contract = Contract(terms)
        contract.costing.hours = estimate(self.mandate.profile, cfp.job).total_hours
        if followed.contract is None:
            self.inbox.listen(topics.events(body.job_id))
        followed.contract = contract
        contract.timers.add(self.mailbox.call_later((body.accept_by - self.clock.ms()) / 1000 + FUND_WAIT_S * self.clock.speed,
                                                    self._unfunded, contract))
        self.stats.accepted += 1
        self.outbox.event(body.job_id, "accepted", detail="takeover" if body.takeover else "")

    def on_closed(self, env: Envelope, body: JobClosed) -> None:
        followed = self._from_requester(env, body.job_id)
        if followed is None:
            return
        self.bidder.note_outcome(body)
        self.offers.closed(body.job_id)
        contract = followed.contract
        if contract and contract.state == ContractState.DONE and body.outcome == "paid" and body.machine_id == self.machine_id \
                and self._paid(contract):
            self.settle(contract)  # the 'paid' event may arrive after this, or not at all
        if contract and contract.active:
            self.runner.closed(contract, body.outcome)
            contract.move(ContractState.CANCELLED)
            self.stop_running(contract)
        self.forget(body.job_id)

    def on_release(self, env: Envelope, body: Release) -> None:
        """The requester asks us to give up a job before it starts: ``released`` if we had not started it
        (nor begun charging for it), else ``kept``. Asked again, the same answer."""
        followed = self._from_requester(env, body.job_id)
        if followed is None or body.machine_id != self.machine_id or followed.contract is None:
            return
        contract = followed.contract
        if contract.state in (ContractState.ACCEPTED, ContractState.FUNDED) and self.book.running is not contract:
            contract.move(ContractState.WITHDRAWN)
            contract.timers.cancel()
            self.stats.released += 1
            log.info("machine=%s job=%s released before start to %s", self.machine_id, body.job_id, body.to_machine)
            self.outbox.event(body.job_id, "released", detail=f"to {body.to_machine}", move=body.move)
            self.offers.look()
        elif contract.state is ContractState.WITHDRAWN:
            self.outbox.event(body.job_id, "released", detail="not ours", move=body.move)
        else:
            why = "charging to start" if contract.state is ContractState.FUNDED else contract.state.value
            self.outbox.event(body.job_id, "kept", detail=why, move=body.move)

    def _from_requester(self, env: Envelope, job_id: str) -> Followed | None:
        """The job if we follow it and ``env`` comes from the requester that posted it."""
        followed = self.book.followed(job_id)
        return followed if followed is not None and env.sender == followed.requester else None

    # -- the job's events ------------------------------------------------------------------------

    def on_event(self, env: Envelope, event: JobEvent) -> None:
        contract = self.book.contract(event.job_id)
        if contract is None or env.sender != contract.terms.requester or event.machine_id != self.machine_id:
            return
        if event.kind == "funded" and contract.state == ContractState.ACCEPTED:
            if self.ledger is not None and not self._escrow_holds(contract):
                return
            contract.move(ContractState.FUNDED)
            contract.timers.cancel()
            self.maybe_start()
        elif event.kind == "paid" and contract.state == ContractState.DONE and self._paid(contract):
            self.settle(contract)

    def _escrow_holds(self, contract: Contract) -> bool:
        assert self.ledger is not None
        try:
            escrow = self.ledger.escrow(contract.job.id)
        except EscrowNotFound:
            log.warning("machine=%s job=%s told funded but no escrow exists", self.machine_id, contract.job.id)
            return False
        return escrow.state.value == "held" and escrow.amount >= contract.terms.price

    def _paid(self, contract: Contract) -> bool:
        """The requester says it paid: true if the ledger shows the escrow released to our wallet (we
        pay the job's costs and our holders only out of money that arrived)."""
        if self.ledger is None or settlement.paid(self.ledger, contract.job.id, self.machine_id) >= contract.terms.price:
            return True
        log.warning("machine=%s job=%s told paid but no release to us is in the ledger", self.machine_id, contract.job.id)
        return False

    def _unfunded(self, contract: Contract) -> None:
        if contract.state == ContractState.ACCEPTED and self.ledger is not None and self._escrow_holds(contract):
            log.info("machine=%s job=%s funded in the ledger though no 'funded' came; queued", self.machine_id, contract.job.id)
            contract.move(ContractState.FUNDED)
            self.maybe_start()
        elif contract.state == ContractState.ACCEPTED:
            log.warning("machine=%s job=%s never funded; slot released", self.machine_id, contract.job.id)
            contract.move(ContractState.WITHDRAWN)

    # -- running ---------------------------------------------------------------------------------

    def maybe_start(self) -> None:
        if self.book.running is not None or self.holding.held_by is not None:
            return
        contract = self.book.next_ready()  # earliest deadline first
        if contract is None:
            self.offers.look()  # nothing of our own to do: take over work others have not started
            return
        self.book.run(contract)
        t = self.driver.telemetry()
        profile = self.mandate.profile
        work = estimate(profile, contract.job, position=t.position)
        vehicle = profile.vehicle
        charge_h = vehicle.charge_hours(work.total_km, t.battery_pct or 0.0) if vehicle else 0.0
        if charge_h > 0:  # parked, the driver charges; start when the battery holds the route
            contract.timers.add(self.mailbox.call_later(charge_h * 3600, self._begin, contract))
        else:
            self._begin(contract)

    def _begin(self, contract: Contract) -> None:
        """Run the job as a workflow: it checks, starts, watches and ends it."""
        if contract.state != ContractState.FUNDED or self.book.running is not contract:
            return
        if self.holding.held_by is not None:  # a person took the machine while it charged: start after the handback
            self.book.release()
            return
        if self.ledger is not None and not self._escrow_holds(contract):  # refunded since it was funded: called off
            contract.move(ContractState.CANCELLED)
            contract.timers.cancel()
            self.book.release(contract)
            self.maybe_start()
            return
        t = self.driver.telemetry()
        profile = self.mandate.profile
        work = estimate(profile, contract.job, position=t.position)
        costing = contract.costing
        costing.hours = work.total_hours
        costing.cost = job_cost(profile, work, self.market)
        costing.wear_at_start = t.wear_pct
        contract.move(ContractState.RUNNING)
        self.runner.begin(contract, work.total_hours, work.wear_pct(profile))

    def job_done(self, contract: Contract) -> None:
        """The workflow finished the job (and said ``done``): book it, start the next."""
        contract.move(ContractState.DONE)
        contract.timers.cancel()
        wear = self.driver.telemetry().wear_pct
        costing = contract.costing
        self.diary.store([wear_item(contract.job.id, contract.job.capability, wear, wear - costing.wear_at_start, costing.hours)])
        self.book.release(contract)
        contract.timers.add(self.mailbox.call_later(DONE_AGAIN_S * self.clock.speed, self._unpaid, contract))
        self.stats.done += 1
        self.stats.busy_hours += costing.hours
        if self.maintenance_due:
            self.maintain()
        self.outbox.telemetry(self.driver.telemetry())
        self.maybe_start()

    def given_up(self, contract: Contract) -> None:
        """The workflow ended the job unfinished (failed, escalated, aborted by an operator)."""
        if contract.state == ContractState.RUNNING:
            self.stats.failed += 1
            contract.move(ContractState.FAILED)
        self.stop_running(contract)

    def stop_running(self, contract: Contract) -> None:
        contract.timers.cancel()
        if self.book.running is contract:
            if self.driver.job_run(contract.job.id) in ("running", "paused"):
                try:
                    self.driver.cancel()
                except (CommandRejected, DriverError) as exc:
                    log.error("machine=%s job=%s cannot stop the job on the machine: %s", self.machine_id, contract.job.id, exc)
            self.book.release()
            if self.maintenance_due:
                self.maintain()
            self.maybe_start()

    def maintain(self) -> None:
        """The maintenance job was done: wear back to zero; a machine busy with a job is serviced as
        soon as that job ends."""
        if self.book.running is not None:
            self.maintenance_due = True
            return
        self.maintenance_due = False
        self.driver.maintain()
        self.outbox.telemetry(self.driver.telemetry())

    # -- money -----------------------------------------------------------------------------------

    def _unpaid(self, contract: Contract) -> None:
        """Still not paid for a job we said ``done``: settle if the ledger shows the release, stop
        waiting if the escrow went back (the requester gave up on it), else say ``done`` again."""
        if contract.state != ContractState.DONE:
            return
        if self._paid(contract):
            self.settle(contract)
            return
        if self.ledger is not None:
            try:
                if self.ledger.escrow(contract.job.id).state.value == "refunded":
                    log.warning("machine=%s job=%s refunded after we said done; no longer waiting", self.machine_id, contract.job.id)
                    return
            except EscrowNotFound:
                pass
        self.stats.done_again += 1
        self.outbox.event(contract.job.id, "done", progress=1.0, detail="again: not paid yet")
        contract.timers.add(self.mailbox.call_later(DONE_AGAIN_S * self.clock.speed, self._unpaid, contract))

    def settle(self, contract: Contract) -> None:
        assert contract.costing.cost is not None
        contract.timers.cancel()
        costs = settlement.JobCosts.of(contract.terms.price, contract.costing.cost)
        owed = costs.to_owners - costs.kept(self.mandate.retain_bps)
        if self.ledger is not None:
            owed = settlement.settle_costs(self.ledger, contract.job.id, self.machine_id, costs, retain_bps=self.mandate.retain_bps)
        contract.move(ContractState.PAID)
        s = self.stats
        s.paid += 1
        s.revenue += costs.price
        s.energy += costs.energy
        s.wear_cost += costs.wear
        s.consumables += costs.consumables
        s.to_owners += owed
        s.settled.append((contract.job.id, costs))

    def work_in_hand(self) -> int:
        """What the jobs accepted and not yet paid will leave after their variable costs: earned, not
        yet booked. A machine busy with long jobs is not losing money."""
        left = 0
        profile = self.mandate.profile
        for c in self.book.contracts():
            if c.active or c.state == ContractState.DONE:
                cost = c.costing.cost or job_cost(profile, estimate(profile, c.job), self.market)
                left += settlement.JobCosts.of(c.terms.price, cost).to_owners
        return left
