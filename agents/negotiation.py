"""The requester's side of a negotiation: whom it counters, what it answers, and the deal.

After the sealed bids close, a requester that haggles (``RequesterStrategy``) counters the best
``counter_top`` bidders below the best price, offering a later deadline too if it can wait, and
answers the machines' counters by the strategy: accept (the deal is the award), counter again, or
stop. A round is decided once every machine countered has answered it, on all its answers together
in the order of their prices, so a seeded day does not depend on which answer arrived first. A machine's every offer stands until the negotiation closes, so when it closes without a deal
the requester awards the best standing offer, as it would have awarded the best bid. Pure
bookkeeping (no I/O, no clock): the requester sends what this returns. A pydantic model, so the
requester's journal keeps it across a restart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from hub.messages import Bid, HaggleTerms
from pricing.haggle import HaggleMove, HaggleRules, RequesterStrategy, requester_move, requester_opening

__all__ = ["Deal", "Negotiation", "Step", "Talk"]


class Step(BaseModel):
    """One message of the negotiation, for the outcome's record and the cockpit."""

    round: int
    side: Literal["requester", "machine"]
    machine_id: str
    move: str
    price: int | None = None
    finish_by: int | None = None
    note: str = ""


class Talk(BaseModel):
    """The negotiation with one bidder."""

    machine_id: str
    bid: Bid
    price: int
    """The machine's standing offer: its lowest price so far."""
    finish_by: int
    """The deadline its standing offer is for (epoch ms)."""
    round: int = 0
    """The round of the requester's latest counter."""
    countered: int | None = None
    """The price of that counter."""
    waiting: bool = False
    """A counter is out and the machine has not answered it."""
    reply: HaggleTerms | None = None
    """Its answer to this round, until the round is decided."""
    over: bool = False


class Deal(BaseModel):
    machine_id: str
    price: int
    finish_by: int


class Negotiation(BaseModel):
    strategy: RequesterStrategy
    rules: HaggleRules
    deadline_at: int
    """The call's deadline."""
    limit: int
    """The most the requester pays in this negotiation: the best bid (it can always take that)."""
    opening: int
    tick: int = 10_000
    """Counters are whole multiples of this."""
    talks: dict[str, Talk] = {}
    steps: list[Step] = []
    deal: Deal | None = None

    @classmethod
    def start(cls, strategy: RequesterStrategy, rules: HaggleRules, deadline_at: int, ranked: list[Bid],
              tick: int, *, budget: int | None = None) -> tuple[Negotiation, list[HaggleTerms]]:
        """Counter the best ``counter_top`` bids: the negotiation and the counters to send (none when
        there is nothing to haggle over: no bid, or the best already at the opening). ``budget``: the
        most the requester pays, if less than the best bid."""
        best = ranked[0].price if ranked else 0
        limit = min(best, budget) if budget is not None else best
        n = cls(strategy=strategy, rules=rules, deadline_at=deadline_at, limit=limit,
                opening=min(requester_opening(strategy, best, tick), limit) if ranked else 0, tick=tick)
        counters = []
        for bid in ranked[:strategy.counter_top]:
            talk = Talk(machine_id=bid.machine_id, bid=bid, price=bid.price, finish_by=deadline_at)
            n.talks[bid.machine_id] = talk
            if n.opening < bid.price:
                counters.append(n._counter(talk, n.opening, "your best price, if you can meet it"))
            else:
                talk.over = True
        return n, counters

    def finish_by(self) -> int:
        """The deadline the requester's counters offer: later than the call's if it can wait."""
        return self.deadline_at + round(self.strategy.offers_slack() * 3_600_000)

    def receive(self, terms: HaggleTerms) -> None:
        """Keep a machine's answer to the round it is in; ``step`` acts on the round's answers together."""
        talk = self.talks[terms.machine_id]
        talk.waiting, talk.reply = False, terms
        self.steps.append(Step(round=terms.round, side="machine", machine_id=terms.machine_id, move=terms.move, price=terms.price,
                               finish_by=terms.finish_by, note=terms.note))

    @property
    def ready(self) -> bool:
        """Every machine countered has answered (or is out): the round can be decided."""
        return not any(t.waiting for t in self.talks.values())

    def step(self) -> list[HaggleTerms]:
        """Decide a round on all its answers at once, in the order of their prices (then machine
        ids), not of their arrival: the best acceptable one is the deal; otherwise the requester
        counters each machine that countered, while rounds are left. Returns the counters to send."""
        deals: list[Deal] = []
        counters: list[tuple[Talk, HaggleMove]] = []
        replies = sorted((t for t in self.talks.values() if t.reply is not None),
                         key=lambda t: (t.reply.price if t.reply and t.reply.price is not None else t.price, t.machine_id))
        for talk in replies:
            terms = talk.reply
            assert terms is not None
            talk.reply = None
            finish = terms.finish_by if terms.finish_by is not None else self.finish_by()
            if terms.move == "accept" and talk.countered is not None:
                deals.append(Deal(machine_id=talk.machine_id, price=talk.countered, finish_by=finish))
                continue
            if terms.move != "counter" or terms.price is None:
                talk.over = True  # withdrawn: its last offer stands
                continue
            if terms.price < talk.price:
                talk.price, talk.finish_by = terms.price, finish
            move = requester_move(self.strategy, opening=self.opening, limit=self.limit, offer=terms.price, round=terms.round)
            if move.move == "accept":
                deals.append(Deal(machine_id=talk.machine_id, price=terms.price, finish_by=finish))
            elif move.move == "counter" and move.price is not None and terms.round < self.rules.rounds:
                counters.append((talk, move))
            else:
                talk.over = True
        if deals:
            best = min(deals, key=lambda d: (d.price, d.finish_by, d.machine_id))
            self._agree(self.talks[best.machine_id], best.price, best.finish_by)
            return []
        return [self._counter(talk, move.price or talk.price, move.why) for talk, move in counters]

    def expects(self, machine_id: str, round: int) -> bool:
        """Whether an answer from ``machine_id`` to ``round`` is due now."""
        talk = self.talks.get(machine_id)
        return self.deal is None and talk is not None and talk.waiting and talk.round == round

    @property
    def settled(self) -> bool:
        """A deal, or nobody left to haggle with."""
        return self.deal is not None or all(t.over for t in self.talks.values())

    def ranked(self, bids: list[Bid]) -> list[Bid]:
        """Who to award, in order: the deal first, then every bid at its standing offer (price, then finish)."""
        def standing(bid: Bid) -> Bid:
            talk = self.talks.get(bid.machine_id)
            if self.deal is not None and bid.machine_id == self.deal.machine_id:
                return bid.model_copy(update={"price": self.deal.price})
            return bid.model_copy(update={"price": talk.price}) if talk is not None else bid
        offers = [standing(b) for b in bids]
        first = [b for b in offers if self.deal is not None and b.machine_id == self.deal.machine_id]
        rest = sorted((b for b in offers if not first or b.machine_id != first[0].machine_id),
                      key=lambda b: (b.price, b.eta_h, b.machine_id))
        return first + rest

    def deadline_for(self, machine_id: str) -> int:
        """The deadline agreed with ``machine_id`` (the call's unless a counter moved it)."""
        if self.deal is not None and self.deal.machine_id == machine_id:
            return self.deal.finish_by
        talk = self.talks.get(machine_id)
        return talk.finish_by if talk is not None else self.deadline_at

    def _counter(self, talk: Talk, price: int, why: str) -> HaggleTerms:
        price = max(price // self.tick * self.tick, self.tick)
        talk.round += 1
        talk.countered, talk.waiting = price, True
        terms = HaggleTerms(job_id=talk.bid.job_id, machine_id=talk.machine_id, round=talk.round, move="counter", price=price,
                            finish_by=self.finish_by(), note=why[:280])
        self.steps.append(Step(round=talk.round, side="requester", machine_id=talk.machine_id, move="counter", price=price,
                               finish_by=terms.finish_by, note=terms.note))
        return terms

    def _agree(self, talk: Talk, price: int, finish_by: int) -> None:
        talk.over = True
        talk.price, talk.finish_by = min(talk.price, price), finish_by
        self.deal = Deal(machine_id=talk.machine_id, price=price, finish_by=finish_by)
