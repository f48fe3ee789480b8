"""The haggler: the machine's side of a negotiation, inside the bounds its owners set.

A call may allow negotiation (``HaggleRules``). After the bids, the requester may counter this
machine — a price, and a deadline that may differ from the call's — and the machine answers each
round once: accept, counter, or withdraw (its last offer stands). The rule engine says what a
concession costs (``pricing.haggle.machine_band``: the least price at the deadline asked, the
concession the owners allow a stranger or a holder, the slack a later deadline gives), and every
answer lies in that band whoever made it. A counter that comes late, out of turn, past the round
limit or not from the job's requester is dropped and counted; a repeated round gets the same answer
again. With a model, the model answers (``MachineAgent.propose_counter``) within a share of the
time left, checked by ``pricing.haggle.guard_counter``; a timer answers by the rules if it is late,
as for bids. Everything here runs on the node's mailbox thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from agents.node.book import ContractBook
from agents.node.mandate import Mandate
from agents.node.outbox import Outbox
from agents.node.pricer import Pricer
from agents.node.stats import NodeStats
from core.clock import Timeline
from core.errors import EnvelopeRejected
from core.mailbox import Mailbox
from hub import topics
from hub.envelope import Envelope
from hub.messages import Haggle, HaggleTerms
from ledger import Identity
from pricing.bids import OpenCall
from pricing.guard import DecisionPath, ModelUse
from pricing.haggle import (
    CounterProposal,
    HaggleAsk,
    HaggleMove,
    MachineBand,
    guard_counter,
    machine_band,
    machine_move,
)

if TYPE_CHECKING:
    from agents.llm import BackgroundLoop
    from agents.machine_agent import MachineAgent
    from tools.deps import MachineDeps

__all__ = ["HaggleStep", "Haggler", "Talk"]

log = logging.getLogger("tamc.node")


class HaggleStep(BaseModel):
    """One message of a negotiation, as the machine's owners and its cockpit read it."""

    model_config = ConfigDict(frozen=True)

    round: int
    side: str
    """``requester`` or ``machine``."""
    move: str
    price: int | None = None
    finish_by: int | None = None
    note: str = ""
    path: str = "rules"


@dataclass
class Talk:
    """This machine's negotiation on one job."""

    job_id: str
    opening: int
    """Its bid: where its concessions start."""
    round: int = 0
    """The last round answered."""
    answers: dict[int, HaggleTerms] = field(default_factory=dict)
    agreed: int | None = None
    """The lowest price it offered or accepted: an award below it is declined."""
    steps: list[HaggleStep] = field(default_factory=list)


class Haggler:
    def __init__(self, *, machine_id: str, identity: Identity, mandate: Mandate, clock: Timeline, mailbox: Mailbox, stats: NodeStats,
                 book: ContractBook, outbox: Outbox, pricer: Pricer, opening: Callable[[str], int | None],
                 stakeholder: Callable[[str], bool], agent: MachineAgent | None = None, loop: BackgroundLoop | None = None,
                 deps: Callable[[], MachineDeps] | None = None) -> None:
        self.machine_id = machine_id
        self.mailbox = mailbox
        self.agent = agent
        self.loop = loop
        self.deps = deps
        self.identity = identity
        self.mandate = mandate
        self.clock = clock
        self.stats = stats
        self.book = book
        self.outbox = outbox
        self.pricer = pricer
        self.opening = opening
        """The price this machine bid on a job (None: it did not bid)."""
        self.stakeholder = stakeholder
        """Whether a job's owner holds shares in this machine (it may concede more to them)."""
        self.talks: dict[str, Talk] = {}

    def on_haggle(self, env: Envelope, body: Haggle) -> None:
        if body.machine_id != self.machine_id:
            return  # a counter to another bidder: sealed to it, nothing for us
        followed = self.book.followed(body.job_id)
        if followed is None:
            return self._drop("unknown_job", body)
        call = followed.call
        if env.sender != followed.requester:
            return self._drop("not_requester", body)
        rules = call.haggle
        if rules is None or followed.contract is not None or self.clock.ms() > rules.close_at:
            return self._drop("late" if rules is not None else "not_negotiable", body)
        try:
            terms = body.open(self.identity)
        except EnvelopeRejected:
            return self._drop("unsealable", body)
        if terms.move != "counter" or terms.price is None:
            return self._drop("malformed", body)
        opening = self.opening(body.job_id)
        if opening is None:
            return self._drop("not_bid", body)
        talk = self.talks.setdefault(body.job_id, Talk(job_id=body.job_id, opening=opening, agreed=opening))
        if body.round in talk.answers:  # the requester did not hear our answer: the same again
            self._send(call.requester, talk.answers[body.round])
            return None
        if body.round == talk.round:
            return None  # the model is still answering this round
        if body.round != talk.round + 1 or body.round > rules.rounds:
            return self._drop("out_of_turn", body)
        talk.round = body.round
        finish_by = terms.finish_by if terms.finish_by is not None else call.deadline_at
        talk.steps.append(HaggleStep(round=body.round, side="requester", move="counter", price=terms.price,
                                     finish_by=finish_by, note=terms.note))
        band, move = self.judge(body.job_id, terms.price, finish_by, body.round)
        if self.agent is None or self.loop is None or self.deps is None:
            self._answer(talk, call, body.round, move, "rules")
        elif band is None:
            self._answer(talk, call, body.round, move, "rules-fast-path")
        else:
            self._ask_model(talk, call, terms, finish_by, band, move)
        return None

    def judge(self, job_id: str, price: int, finish_by: int, round: int) -> tuple[MachineBand | None, HaggleMove]:
        """The band at ``finish_by`` and the rules' answer to a counter of ``price`` in ``round`` on a job followed."""
        followed = self.book.followed(job_id)
        assert followed is not None
        call = followed.call
        assert call.haggle is not None
        policy = self.mandate.profile.policy
        job = self.pricer.remaining(call.job.model_copy(update={"max_price": None}), finish_by)
        rules = self.pricer.decide(job, finish_by)
        opening = self.opening(job_id) or rules.price or 0
        band = machine_band(rules, policy, opening=opening, reserve=call.reserve, stakeholder=self.stakeholder(job_id),
                            slack_h=(finish_by - call.deadline_at) / 3_600_000)
        return band, machine_move(band, price=price, round=round, rounds=call.haggle.rounds, beta=policy.concession_beta,
                                  finish_by=finish_by, tick=policy.price_tick)

    def _ask_model(self, talk: Talk, call: OpenCall, terms: HaggleTerms, finish_by: int, band: MachineBand, rules: HaggleMove) -> None:
        """The model answers within its share of the time left; the rules' answer goes out if it is late."""
        assert self.agent is not None and self.loop is not None and self.deps is not None and call.haggle is not None
        assert terms.price is not None
        now = self.clock.ms()
        left = max(call.haggle.close_at - now, 0) / 1000
        budget = 0.8 * left / max(call.haggle.rounds - terms.round + 1, 1)
        round_ = terms.round
        self.mailbox.call_later(budget, self._late, talk, call, round_, rules, budget)
        ask = HaggleAsk(job=call.job, requester=call.requester, round=round_, rounds=call.haggle.rounds, opening=talk.opening,
                        rules_price=rules.price or band.least, offered=terms.price, finish_h=max(finish_by - now, 0) / 3_600_000,
                        slack_h=(finish_by - call.deadline_at) / 3_600_000, band=band, note=terms.note)
        thinking = self.clock.hold(f"model counter for {self.machine_id} on {call.job.id}")
        future = self.loop.submit(self.agent.propose_counter(self.deps(), ask, budget / self.clock.speed))

        def landed(f: Future[tuple[CounterProposal | None, ModelUse]]) -> None:
            try:
                use = f.result()[1] if not f.cancelled() and f.exception() is None else None
                late = self.clock.charge(use.latency_ms / 1000 if use is not None else 0.0)
                self.mailbox.call_later(late, self._model_answered, talk, call, round_, f, band, rules, terms.price, finish_by)
            finally:
                thinking.release()

        future.add_done_callback(landed)

    def _model_answered(self, talk: Talk, call: OpenCall, round_: int, future: Future[tuple[CounterProposal | None, ModelUse]],
                        band: MachineBand, rules: HaggleMove, offered: int, finish_by: int) -> None:
        try:
            proposal, use = future.result()
        except Exception as exc:  # a bug on the model path must not cost the answer
            log.exception("machine=%s job=%s model haggle failed", self.machine_id, call.job.id)
            proposal, use = None, ModelUse(model=self.agent.label if self.agent else "", error=f"agent error: {exc}")
        self.stats.count_model(use)
        if round_ in talk.answers:
            return  # answered by the rules already: the model was late
        if proposal is None:
            self._answer(talk, call, round_, rules.model_copy(update={"why": f"{rules.why} ({use.error})"}), "rules-fallback")
            return
        move, path = guard_counter(band, proposal, offered=offered, finish_by=finish_by, rules=rules,
                                   tick=self.mandate.profile.policy.price_tick)
        self._answer(talk, call, round_, move, path)

    def _late(self, talk: Talk, call: OpenCall, round_: int, rules: HaggleMove, budget: float) -> None:
        if round_ not in talk.answers:
            self._answer(talk, call, round_, rules.model_copy(update={"why": f"{rules.why} (model: no answer within {budget:.1f} market s)"}),
                         "rules-fallback")

    def _answer(self, talk: Talk, call: OpenCall, round_: int, move: HaggleMove, path: DecisionPath) -> None:
        answer = HaggleTerms(job_id=talk.job_id, machine_id=self.machine_id, round=round_, move=move.move, price=move.price,
                             finish_by=move.finish_by, note=move.why[:280])
        if move.price is not None:
            talk.agreed = min(talk.agreed or move.price, move.price)
        talk.answers[round_] = answer
        talk.steps.append(HaggleStep(round=round_, side="machine", move=move.move, price=move.price, finish_by=move.finish_by,
                                     note=move.why, path=path))
        self.stats.haggles[move.move] += 1
        self.stats.haggle_paths[path] += 1
        log.info("machine=%s job=%s haggle round=%d -> %s %s path=%s (%s)", self.machine_id, talk.job_id, round_, move.move,
                 move.price, path, move.why)
        self._send(call.requester, answer)

    def agreed(self, job_id: str) -> int | None:
        """The least price this machine agreed to on ``job_id`` in a negotiation (None: it did not haggle)."""
        talk = self.talks.get(job_id)
        return talk.agreed if talk is not None and talk.round else None

    def forget(self, job_id: str) -> None:
        self.talks.pop(job_id, None)

    def _send(self, requester: str, terms: HaggleTerms) -> None:
        self.outbox.bid(topics.bids(terms.job_id), Haggle.of(terms, requester))

    def _drop(self, reason: str, body: Haggle) -> None:
        self.stats.haggle_dropped[reason] += 1
        log.info("machine=%s job=%s haggle round=%d dropped: %s", self.machine_id, body.job_id, body.round, reason)
