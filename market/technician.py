"""A technician's desk on the hub: the human a machine hires when its holders approve maintenance.

It bids on ``maintenance`` calls (``topics.service``) for the kinds of machine it services, in its regions, at its rate
card (labour by the hour, parts by the point of wear restored), and once funded it does the work
and reports it done, like any contractor in the contract net. In the simulated city it works on the
market's clock; a person would answer the same messages from a console.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from core.clock import Timeline
from core.errors import EscrowNotFound
from core.mailbox import Mailbox
from core.money import Money
from hub import topics
from hub.dispatch import Dispatch
from hub.envelope import Envelope
from hub.jobids import JobOwners
from hub.messages import Award, Bid, Body, CallForProposals, JobClosed, JobEvent, SealedBid
from hub.transport import Hub
from ledger import Identity, Ledger, machine_wallet, settlement
from machines.job import MAINTENANCE, JobSpec

__all__ = ["RateCard", "Technician"]

log = logging.getLogger("tamc.technician")


class RateCard(BaseModel):
    model_config = ConfigDict(frozen=True)

    labour_per_hour: Money = 45_000_000
    base_hours: float = Field(default=1.0, gt=0)
    hours_per_wear_pct: float = Field(default=0.04, ge=0)
    parts_per_wear_pct: dict[str, Money] = Field(default_factory=lambda: {
        "printer_3d": 3_000_000, "cnc_mill": 12_000_000, "laser_cutter": 15_000_000, "car": 150_000_000, "drone": 10_000_000})
    """Parts per point of wear restored, by machine kind; kinds not listed are not serviced."""

    def quote(self, job: JobSpec) -> tuple[int, float] | None:
        """Price and hours for ``job``, or None if it is not work this desk does."""
        parts = self.parts_per_wear_pct.get(job.kind.value)
        if job.capability != MAINTENANCE or parts is None or job.amount is None:
            return None
        hours = self.base_hours + self.hours_per_wear_pct * job.amount
        return round(self.labour_per_hour * hours + parts * job.amount), hours


class Technician:
    def __init__(self, tech_id: str, identity: Identity, hub: Hub, ledger: Ledger, *, regions: Sequence[str],
                 clock: Timeline, card: RateCard | None = None) -> None:
        self.id = tech_id
        self.identity = identity
        self.hub = hub
        self.ledger = ledger
        self.clock = clock
        self.card = card or RateCard()
        self.mailbox = Mailbox(f"technician-{tech_id}", clock=clock)
        self._dispatch = (Dispatch().on(CallForProposals, self._on_cfp).on(Award, self._on_award)
                          .on(JobEvent, self._on_funded).on(JobClosed, self._on_closed))
        self._topics = [topics.service(r) for r in regions]
        self._bids: dict[str, tuple[str, int, float]] = {}
        """job id -> (requester did, price, hours) of jobs bid on and not closed."""
        self.done: list[str] = []
        self.owners = JobOwners(lambda account: settlement.account_owner(ledger, account))
        self.unowned_calls = 0
        # the wallet a requester checks a bid's signer against, as for machines
        ledger.open_account(machine_wallet(tech_id), owner=identity.did)

    def start(self) -> Technician:
        for topic in self._topics:
            self.hub.subscribe(topic, self._deliver)
        return self

    def stop(self) -> None:
        for topic in self._topics:
            self.hub.unsubscribe(topic, self._deliver)
        self.mailbox.close()

    def _deliver(self, topic: str, env: Envelope) -> None:
        self.mailbox.post(self._dispatch, env)

    def _on_cfp(self, env: Envelope, cfp: CallForProposals) -> None:
        if not self.owners.owns(cfp.job.id, env.sender):  # a call under someone else's job id
            self.unowned_calls += 1
            return
        quote = self.card.quote(cfp.job)
        if quote is None or self.clock.ms() > cfp.bid_deadline or quote[0] > cfp.reserve:
            return
        price, hours = quote
        self._bids[cfp.job.id] = (env.sender, price, hours)
        self.hub.subscribe(topics.award(cfp.job.id), self._deliver)
        bid = Bid(job_id=cfp.job.id, machine_id=self.id, price=price, eta_h=hours,
                  reason=f"technician: {hours:.1f} h labour and parts for {cfp.job.amount:g}% wear")
        self._publish(topics.bids(cfp.job.id), SealedBid.of(bid, env.sender))  # for the hiring machine's eyes only

    def _on_award(self, env: Envelope, award: Award) -> None:
        if award.machine_id != self.id:
            return
        bid = self._bids.get(award.job_id)
        if bid is None or env.sender != bid[0] or self.clock.ms() > award.accept_by:
            return
        self.hub.subscribe(topics.events(award.job_id), self._deliver)
        self._event(award.job_id, "accepted")

    def _on_funded(self, env: Envelope, event: JobEvent) -> None:
        if event.machine_id != self.id or event.kind != "funded":
            return
        bid = self._bids.get(event.job_id)
        if bid is None or env.sender != bid[0]:
            return
        try:
            if self.ledger.escrow(event.job_id).state.value != "held":
                return
        except EscrowNotFound:
            return
        self._event(event.job_id, "started")
        self.mailbox.call_later(bid[2] * 3600, self._finish, event.job_id)

    def _finish(self, job_id: str) -> None:
        if job_id in self._bids:
            self.done.append(job_id)
            self._event(job_id, "done", progress=1.0)

    def _on_closed(self, env: Envelope, closed: JobClosed) -> None:
        self._close(closed.job_id)

    def _close(self, job_id: str) -> None:
        if self._bids.pop(job_id, None) is not None:
            for topic in (topics.award(job_id), topics.events(job_id)):
                self.hub.unsubscribe(topic, self._deliver)

    def _event(self, job_id: str, kind: str, progress: float = 0.0) -> None:
        self._publish(topics.events(job_id), JobEvent(job_id=job_id, machine_id=self.id, kind=kind, progress=progress))

    def _publish(self, topic: str, body: Body) -> None:
        self.hub.send(topic, body, self.identity)
        log.debug("technician=%s %s %s", self.id, body.TYPE, getattr(body, "job_id", ""))
