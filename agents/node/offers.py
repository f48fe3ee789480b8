"""Offers: taking over work another machine holds and has not started, when this one has room.

An award is provisional until its job starts. A machine with nothing waiting in its own queue looks
at the jobs it bid on and lost, still open, and offers to take over the one that would leave its
owners most (the price in escrow less its own cost), if it can finish it in time at a profit and
sooner than the holder said it would (the award says when). The requester judges the offer (sooner than the holder, by a margin) and asks the holder to
release the job; this machine is awarded it only once the holder has. One offer is out at a time,
a machine offers to relieve a given holder of a given job once, and never for a job it has held
(released to another machine, or lost after its accept came late). Everything here runs on the
node's mailbox thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agents.node.book import ContractBook, ContractState, Followed
from agents.node.mandate import Mandate
from agents.node.outbox import Outbox
from agents.node.pricer import Pricer
from agents.node.stats import NodeStats
from core.clock import Timeline
from core.mailbox import Mailbox, Timer
from hub import topics
from hub.messages import Award, Offer

__all__ = ["OFFER_GAIN_H", "OFFER_WAIT_S", "Offers"]

log = logging.getLogger("tamc.node")

OFFER_GAIN_H = 0.25
"""An offer is sent only if the machine would finish at least this much sooner than the holder said."""
OFFER_WAIT_S = 0.25
"""Real seconds at the market's pace an offer waits for the award before the machine looks again
(offer, release, released, award: four messages; a requester refuses by silence)."""

WAITING = frozenset({ContractState.ACCEPTED, ContractState.FUNDED})


class Offers:
    def __init__(self, *, machine_id: str, mandate: Mandate, clock: Timeline, mailbox: Mailbox, stats: NodeStats,
                 book: ContractBook, outbox: Outbox, pricer: Pricer, held_by: Callable[[], str | None],
                 enabled: bool = True) -> None:
        self.machine_id = machine_id
        self.mandate = mandate
        self.clock = clock
        self.mailbox = mailbox
        self.stats = stats
        self.book = book
        self.outbox = outbox
        self.pricer = pricer
        self.held_by = held_by
        self.enabled = enabled
        """False: the machine never offers (awards are final for it, as in award at arrival)."""
        self.pending: str | None = None
        """The job of the offer out now."""
        self._wait: Timer | None = None

    def awarded(self, followed: Followed, award: Award) -> None:
        """An award for a job followed: note its holder; the offer out for it, if any, is answered."""
        followed.holder, followed.holder_price, followed.holder_finish = award.machine_id, award.price, award.finish_at
        if self.pending == followed.call.job.id:
            if award.machine_id == self.machine_id:
                self.stats.moved_in += 1
            self._clear()

    def closed(self, job_id: str) -> None:
        if self.pending == job_id:
            self._clear()

    def look(self) -> None:
        """Offer for the best job to take over, if the machine has room: nothing of its own waiting to
        start, active, not held by a person, and no offer out already."""
        if not self.enabled or self.held_by() is not None or self.pending is not None or self.mandate.standing != "active":
            return
        if any(c.state in WAITING for c in self.book.contracts()):
            return
        best: tuple[int, Offer] | None = None
        floor = self.mandate.profile.policy.price_floor
        now = self.clock.ms()
        for followed in self.book.followed_jobs():
            holder, price, finish = followed.holder, followed.holder_price, followed.holder_finish
            call = followed.call
            if (holder is None or price is None or finish is None or holder == self.machine_id or followed.offered_to == holder
                    or call.deadline_at <= now or followed.contract is not None):  # a job held once is not offered for
                continue
            if price < floor or now + OFFER_GAIN_H * 3_600_000 > finish:
                continue  # refused below whatever the rules say (an eta is never negative): no need to price it
            decision = self.pricer.decide(self.pricer.remaining(call.job.model_copy(update={"max_price": None}), call.deadline_at),
                                          call.deadline_at)
            if decision.action != "bid" or decision.cost is None or decision.eta_h is None:
                continue
            cost = decision.cost.total
            if price < max(cost, floor) or now + (decision.eta_h + OFFER_GAIN_H) * 3_600_000 > finish:
                continue
            offer = Offer(job_id=call.job.id, machine_id=self.machine_id, holder=holder, eta_h=decision.eta_h,
                          reason=f"free now: done in {decision.eta_h:.2f} h at the price in escrow")  # our cost is ours
            if best is None or price - cost > best[0]:
                best = (price - cost, offer)
        if best is None:
            return
        offer = best[1]
        followed_job = self.book.followed(offer.job_id)
        assert followed_job is not None
        followed_job.offered_to = offer.holder
        self.pending = offer.job_id
        self.stats.offers += 1
        log.info("machine=%s job=%s offers to take over from %s (eta %.2f h)", self.machine_id, offer.job_id, offer.holder,
                 offer.eta_h)
        self.outbox.publish(topics.offers(offer.job_id), offer)
        self._wait = self.mailbox.call_later(OFFER_WAIT_S * self.clock.speed, self._unanswered, offer.job_id)

    def _unanswered(self, job_id: str) -> None:
        if self.pending == job_id:
            self._wait = None
            self.pending = None
            self.look()

    def _clear(self) -> None:
        self.pending = None
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
