"""The bidder: calls for proposals heard, priced and answered before their deadline.

The rule engine prices every call (with what memory says of similar jobs, if it answers in time).
With a model, the call goes to the LLM agent off the mailbox thread; the answer is checked by the
guard, and a timer answers with the rules' decision before the deadline whatever the model does.
Without one, or when the rules refuse or the job is routine, the rules answer at once. A person
may also bid by hand (``auto_bid=False`` holds each call open for them until its deadline).
Everything here runs on the node's mailbox thread.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from agents.node.book import ContractBook, Followed
from agents.node.diary import Diary
from agents.node.mandate import Mandate
from agents.node.outbox import HISTORY, Inbox, Outbox
from agents.node.pricer import Pricer
from agents.node.stats import NodeStats
from core.clock import Timeline
from core.errors import MemoryStoreError
from core.mailbox import Mailbox, Timer
from hub import topics
from hub.envelope import Envelope
from hub.jobids import JobOwners
from hub.messages import Award, Bid, CallForProposals, JobClosed, SealedBid
from machines.work import estimate
from memory import MachineMemory
from memory.signals import outcome_item, recall_for_bid
from pricing.bids import BidRecord, OpenCall
from pricing.guard import BidDecision, from_rules
from pricing.rules import Decision, DemandForecast, MachineStatus, MarketContext, MemorySignal, Rule

if TYPE_CHECKING:
    from agents.llm import BackgroundLoop
    from agents.machine_agent import MachineAgent
    from tools.deps import MachineDeps

__all__ = ["FORGET_AFTER_S", "MEMORY_BUDGET_S", "Bidder"]

log = logging.getLogger("tamc.node")

FORGET_AFTER_S = 60.0
"""Real seconds at the market's pace a machine keeps following a job after its deadline, if its
requester never closes it (it died)."""
MEMORY_BUDGET_S = 0.25
"""At most (and at most a quarter of the bid window, so the bid still travels in time) a call waits
for memory before the rules price without it."""


class Bidder:
    def __init__(self, *, machine_id: str, mandate: Mandate, clock: Timeline, mailbox: Mailbox, stats: NodeStats,
                 book: ContractBook, outbox: Outbox, inbox: Inbox, diary: Diary, memory: MachineMemory | None,
                 market: MarketContext, status: Callable[[int | None], MachineStatus], agent: MachineAgent | None,
                 loop: BackgroundLoop | None, deps: Callable[[], MachineDeps], held_by: Callable[[], str | None],
                 forget: Callable[[str], None], auto_bid: bool = True, owners: JobOwners | None = None) -> None:
        self.machine_id = machine_id
        self.owners = owners
        """Who may post which job ids (the ledger's accounts); None only for a node without a ledger (a benchmark)."""
        self.mandate = mandate
        self.clock = clock
        self.mailbox = mailbox
        self.stats = stats
        self.book = book
        self.outbox = outbox
        self.inbox = inbox
        self.diary = diary
        self.pricer = Pricer(machine_id=machine_id, mandate=mandate, clock=clock, mailbox=mailbox, stats=stats, book=book,
                             market=market, status=status, agent=agent, loop=loop, deps=deps, answer=self._answer_open)
        self.memory = memory
        self.held_by = held_by
        """The operator holding the machine, if any: the agent stays silent meanwhile."""
        self.forget = forget
        self.auto_bid = auto_bid
        """False holds each call open until its bid deadline for a person (or their chat) to bid by hand."""
        self.calls: dict[str, OpenCall] = {}
        """Calls heard and not yet answered (the model may be pricing them)."""
        self.history: deque[BidRecord] = deque(maxlen=HISTORY)
        self.records: dict[str, BidRecord] = {}
        """The pending record of each job bid on, until its outcome is known."""
        self._recalling: dict[str, Timer] = {}
        """Calls waiting for memory's price signal, with the timer that prices without it if memory is late."""

    def _s(self, real_s: float) -> float:
        return real_s * self.clock.speed

    # -- hearing a call --------------------------------------------------------------------------

    def on_cfp(self, env: Envelope, cfp: CallForProposals) -> None:
        self.stats.cfps += 1
        if self.held_by() is not None:
            self.stats.declines["decline.operator"] += 1  # a person holds the machine: the agent stays silent
            return
        job = cfp.job
        if self.owners is not None and not self.owners.owns(job.id, env.sender):
            self.stats.unowned_calls += 1  # a call under an id its signer does not own: someone else's, or nobody's
            log.info("machine=%s call %s refused: signed by %s, who does not own its id", self.machine_id, job.id, env.sender)
            return
        if self.clock.ms() > cfp.bid_deadline or self.book.follows(job.id) or job.id in self.calls:
            return
        call = OpenCall(job=job, requester=env.sender, reserve=cfp.reserve, bid_deadline=cfp.bid_deadline,
                        deadline_at=cfp.deadline_at, speed=cfp.speed, haggle=cfp.haggle)
        self.diary.count_demand(job, "calls")
        self.calls[job.id] = call
        rules = self.pricer.rule_decision(call)
        if self.memory is not None and rules.action == "bid":
            self._recall_prices(call)  # answered in _priced, with the rules rerun on what memory says
        else:
            self.respond(call, rules)

    def _recall_prices(self, call: OpenCall) -> None:
        """Ask memory what similar jobs went for, off the mailbox thread (awards and accepts are not
        held up behind a vector search); answer when it returns, or without it once it is late."""
        assert self.memory is not None
        job_id = call.job.id
        window = (call.bid_deadline - self.clock.ms()) / 1000  # the model's margin is no part of it: the rules bid at once
        self._recalling[job_id] = self.mailbox.call_later(max(min(self._s(MEMORY_BUDGET_S), window / 4), 0.0), self._priced, job_id, None)
        reading = self.clock.hold(f"memory read for {self.machine_id} on {job_id}")  # a virtual clock waits for it
        profile = self.mandate.profile
        future = self.memory.store.submit(recall_for_bid, self.memory, call.job, profile.policy, self.clock.now(),
                                          estimate(profile, call.job).total_hours)

        def answered(f: Future[tuple[MemorySignal | None, DemandForecast | None]]) -> None:
            self.mailbox.post(self._priced, job_id, f)
            reading.release()

        future.add_done_callback(answered)

    def _priced(self, job_id: str, future: Future[tuple[MemorySignal | None, DemandForecast | None]] | None) -> None:
        late = self._recalling.pop(job_id, None)
        if late is None:
            return  # answered already (memory was late)
        late.cancel()  # no timer left to fire for nothing (each is an instant on a virtual clock)
        call = self.calls.get(job_id)
        if call is None:
            return
        if future is None:
            self.stats.memory_late += 1
        else:
            try:
                signal, forecast = future.result()
            except MemoryStoreError as exc:
                self.diary.failed("price from memory", exc)
            except Exception:  # a bug on the memory path must not cost the bid
                self.stats.memory_errors += 1
                log.exception("machine=%s job=%s price from memory failed", self.machine_id, job_id)
            else:
                if signal is not None or forecast is not None:
                    call = call.model_copy(update={"memory": signal, "forecast": forecast})
                    self.calls[job_id] = call
        self.respond(call)

    def respond(self, call: OpenCall, rules: Decision | None = None) -> None:
        """Answer a call: by hand, by the rules (``rules`` if just computed), or by the model within them."""
        if not self.auto_bid:
            self.mailbox.call_later((call.bid_deadline - self.clock.ms()) / 1000, self._expire_call, call.job.id)
            return
        self.pricer.respond(call, rules or self.pricer.rule_decision(call))

    def _expire_call(self, job_id: str) -> None:
        call = self.calls.get(job_id)
        if call is not None:
            rule = Rule(code="decline.manual", detail="held for a bid by hand; none came before the deadline")
            decision = Decision(action="decline", rules=(rule,), reason=f"decline: {rule.detail}")
            self.answer(call, from_rules(decision, "rules"))

    # -- answering ---------------------------------------------------------------------------------

    def _answer_open(self, call: OpenCall, decision: BidDecision) -> None:
        """The pricer's answer, if the call is still open (not answered by hand meanwhile)."""
        if (current := self.calls.get(call.job.id)) is not None:
            self.answer(current, decision)

    def answer(self, call: OpenCall, decision: BidDecision) -> None:
        """Publish the decision on a call (or stay silent), and remember it."""
        job = call.job
        self.calls.pop(job.id, None)
        self.pricer.pending.pop(job.id, None)
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
        self.history.append(record)
        log.info("machine=%s job=%s action=%s price=%s path=%s model_calls=%d tokens=%d+%d model_ms=%.1f why=%s", self.machine_id,
                 job.id, record.action, record.price, decision.path, record.model_calls, record.input_tokens,
                 record.output_tokens, record.model_ms, decision.why)
        if not bid:
            self.stats.declined_cfps += 1
            codes = {r.code for r in decision.rules.rules if r.code.startswith("decline")} if decision.rules.action == "decline" else set()
            self.stats.declines.update(codes or ({"decline.model"} if decision.path.startswith("llm") else {"decline.reserve"}))
            return
        assert decision.price is not None
        self.records[job.id] = record
        self.diary.count_demand(job, "bids")
        if any(r.code == "price.memory" for r in decision.rules.rules):
            self.stats.memory_priced += 1
        self._send_bid(call, decision.price, decision.eta_h or 0.0, decision.why, decision.path)

    def _send_bid(self, call: OpenCall, price: int, eta_h: float, reason: str, path: str) -> None:
        job = call.job
        followed = self.book.follow(Followed(call, call.requester))
        self.inbox.listen(topics.award(job.id))
        # if the requester never closes the job (it died), stop following it well after its deadline
        followed.forget = self.mailbox.call_later((call.deadline_at - self.clock.ms()) / 1000 + self._s(FORGET_AFTER_S), self.forget, job.id)
        bid = Bid(job_id=job.id, machine_id=self.machine_id, price=price, eta_h=eta_h, path=path, reason=reason[:500])
        self.outbox.bid(topics.bids(job.id), SealedBid.of(bid, call.requester))  # for the requester's eyes only
        self.stats.bids += 1

    # -- by hand -------------------------------------------------------------------------------------

    def manual_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        call = self.calls.get(job_id)
        if call is None or self.clock.ms() > call.bid_deadline or self.held_by() is not None:
            return
        rules = self.pricer.rule_decision(call)
        self.pricer.pending.pop(job_id, None)
        self.answer(call, BidDecision(action="bid", price=price, eta_h=eta_h, path=path, why=reason, rules=rules))

    def manual_decline(self, job_id: str, reason: str) -> None:
        call = self.calls.get(job_id)
        if call is None:
            return
        rules = self.pricer.pending.pop(job_id, None) or self.pricer.rule_decision(call)
        self.answer(call, BidDecision(action="decline", path="llm", why=f"declined: {reason}", rules=rules))

    # -- outcomes ------------------------------------------------------------------------------------

    def note_outcome(self, body: Award | JobClosed) -> None:
        """Keep who won a job we bid on, and at what price — the answer to "why did we lose?" — and
        remember the first outcome of each job (the prices similar jobs will be bid at learn from it)."""
        record = self.records.get(body.job_id)
        if record is None or record.outcome != "pending":
            return
        if isinstance(body, Award):
            record.outcome = "won" if body.machine_id == self.machine_id else "lost"
            record.winner, record.winning_price = body.machine_id, body.price
        elif body.machine_id is None:
            record.outcome = "no-award"
        else:
            return
        followed = self.book.followed(body.job_id)
        if record.outcome == "won" and followed is not None:
            self.diary.count_demand(followed.call.job, "wins")
        if followed is not None:
            self.diary.store([outcome_item(followed.call.job, record)])

    def bid_price(self, job_id: str) -> int | None:
        """The price this machine bid on ``job_id``, while it follows the job (None: it did not bid)."""
        record = self.records.get(job_id)
        return record.price if record is not None and record.action == "bid" else None

    def confidence(self, job_id: str) -> float | None:
        """The model's confidence in the bid that won ``job_id``, if the model made it."""
        record = self.records.get(job_id)
        return record.confidence if record else None

    def drop(self, job_id: str) -> None:
        """Forget the call and the record of a job no longer followed."""
        self.calls.pop(job_id, None)
        self.records.pop(job_id, None)
