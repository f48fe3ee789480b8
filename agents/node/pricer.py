"""The decision on a call: the rule engine's, and the model's within it, raced by a fallback timer.

The model thinks in real time: it gets the budget's market seconds as real seconds at the market's
pace, and its answer lands after the market time its real latency is worth (at once on a real
clock, where that time has passed; ``latency × speed`` later on a virtual one, which waits for it
meanwhile), so the fallback timer races it on either clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from agents.node.book import ContractBook
from agents.node.mandate import Mandate
from agents.node.stats import NodeStats
from core.clock import Timeline
from core.mailbox import Mailbox
from machines.job import JobSpec
from pricing.bids import OpenCall
from pricing.guard import BidDecision, BidProposal, ModelUse, from_rules, guard
from pricing.rules import Decision, DemandForecast, MachineStatus, MarketContext, MemorySignal, decide

if TYPE_CHECKING:
    from agents.llm import BackgroundLoop
    from agents.machine_agent import MachineAgent
    from tools.deps import MachineDeps

__all__ = ["BID_MARGIN_S", "BID_MARGIN_SHARE", "MIN_MODEL_BUDGET_S", "Pricer"]

log = logging.getLogger("tamc.node")

BID_MARGIN_S = 0.05
BID_MARGIN_SHARE = 0.2
"""Kept before a bid deadline to publish the rule engine's bid if the model is late: the larger of 50 ms
and a fifth of the window (a fixed 50 ms was missed by 29 ms on a loaded 2-core CI machine: the broker,
thread hand-offs and the GIL between the timer and the requester grow with the load, not the window)."""
MIN_MODEL_BUDGET_S = 0.005


class Pricer:
    def __init__(self, *, machine_id: str, mandate: Mandate, clock: Timeline, mailbox: Mailbox, stats: NodeStats,
                 book: ContractBook, market: MarketContext, status: Callable[[int | None], MachineStatus],
                 agent: MachineAgent | None, loop: BackgroundLoop | None, deps: Callable[[], MachineDeps],
                 answer: Callable[[OpenCall, BidDecision], None]) -> None:
        self.machine_id = machine_id
        self.mandate = mandate
        self.clock = clock
        self.mailbox = mailbox
        self.stats = stats
        self.book = book
        self.market = market
        self.status = status
        self.agent = agent
        self.loop = loop
        self.deps = deps
        self.answer = answer
        self.pending: dict[str, Decision] = {}
        """Calls waiting for the model, with the rule engine's decision to fall back on."""

    def _s(self, real_s: float) -> float:
        return real_s * self.clock.speed

    def decide(self, job: JobSpec, deadline_at: int, memory: MemorySignal | None = None,
               forecast: DemandForecast | None = None) -> Decision:
        """The rule engine's decision (priced with what memory says of similar jobs and of the demand
        ahead, if anything), then a check that slotting the job in by its deadline leaves every job
        already accepted on time."""
        market = self.market if memory is None and forecast is None else self.market.model_copy(
            update={"memory": memory, "forecast": forecast})
        profile = self.mandate.profile
        status = self.status(deadline_at)
        if self.mandate.standing == "parked":
            status = status.model_copy(update={"standby": True})
        decision = decide(profile, job, status, market)
        return self.book.keeps_later(profile, job, deadline_at, decision, self.clock.ms())

    def remaining(self, job: JobSpec, deadline_at: int) -> JobSpec:
        """The job with its deadline counted from now, in market hours."""
        return job.model_copy(update={"deadline_h": max((deadline_at - self.clock.ms()) / 3_600_000, 1e-9)})

    def rule_decision(self, call: OpenCall) -> Decision:
        """The rules on a call, with the requester's reserve as the most it pays: a price that memory
        (or demand) puts above the reserve comes down to it, while the reserve covers the least price,
        instead of the machine staying silent on work it could do at a profit."""
        most = min(call.reserve, call.job.max_price) if call.job.max_price is not None else call.reserve
        job = self.remaining(call.job.model_copy(update={"max_price": most}), call.deadline_at)
        return self.decide(job, call.deadline_at, call.memory, call.forecast)

    def respond(self, call: OpenCall, rules: Decision) -> None:
        """Answer by the rules, or ask the model within them."""
        if self.agent is None or self.loop is None:
            self.answer(call, from_rules(rules, "rules"))
        elif rules.action != "bid":
            self.answer(call, from_rules(rules, "rules-fast-path", f"the rules refuse, no model can change that: {rules.reason}"))
        elif self.agent.is_routine(rules, call, self.status(call.deadline_at), self.market, self.mandate.profile.policy):
            self.answer(call, from_rules(rules, "rules-fast-path", f"routine job: {rules.reason}"))
        else:
            self._ask_model(call, rules)

    def _ask_model(self, call: OpenCall, rules: Decision) -> None:
        """Hand the call to the model on the agent loop; a timer answers with the rules if it is late."""
        assert self.agent is not None and self.loop is not None
        left = (call.bid_deadline - self.clock.ms()) / 1000
        budget = left - max(self._s(BID_MARGIN_S), BID_MARGIN_SHARE * left)
        if budget < self._s(MIN_MODEL_BUDGET_S):
            self.answer(call, from_rules(rules, "rules-fallback", f"no time to ask the model ({budget:.2f} market s left); {rules.reason}"))
            return
        job_id = call.job.id
        self.pending[job_id] = rules
        self.mailbox.call_later(budget, self._model_late, call, budget)  # the whole margin left to publish in
        thinking = self.clock.hold(f"model answer for {self.machine_id} on {job_id}")
        future = self.loop.submit(self.agent.propose_bid(self.deps(), call, rules, budget / self.clock.speed))

        def landed(f: Future[tuple[BidProposal | None, ModelUse]]) -> None:
            try:
                use = f.result()[1] if not f.cancelled() and f.exception() is None else None
                late = self.clock.charge(use.latency_ms / 1000 if use is not None else 0.0)
                self.mailbox.call_later(late, self._model_answered, call, f)
            finally:
                thinking.release()

        future.add_done_callback(landed)

    def _model_answered(self, call: OpenCall, future: Future[tuple[BidProposal | None, ModelUse]]) -> None:
        assert self.agent is not None
        try:
            proposal, use = future.result()
        except Exception as exc:  # a bug in the agent path must not cost the bid
            log.exception("machine=%s job=%s model path failed", self.machine_id, call.job.id)
            proposal, use = None, ModelUse(model=self.agent.label, error=f"agent error: {type(exc).__name__}: {exc}")
        self.stats.count_model(use)
        rules = self.pending.pop(call.job.id, None)
        if rules is None:
            return  # answered already: the model was late, or a stakeholder bid by hand
        if proposal is None:
            self.answer(call, from_rules(rules, "rules-fallback", f"{use.error}; {rules.reason}", use))
        else:
            self.answer(call, guard(rules, proposal, self.mandate.profile.policy, call.reserve, use))

    def _model_late(self, call: OpenCall, budget: float) -> None:
        rules = self.pending.pop(call.job.id, None)
        if rules is None:
            return
        use = ModelUse(model=self.agent.label if self.agent else "",
                       error=f"timeout: no answer within the {budget:.1f} market s budget ({budget / self.clock.speed:.3f} real s)")
        self.answer(call, from_rules(rules, "rules-fallback", f"{use.error}; {rules.reason}", use))
