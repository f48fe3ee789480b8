"""Haggling: what each side of a negotiation may concede, and the rule strategies that concede it.

A negotiation follows a job's sealed bids when the call allows it (``HaggleRules``): the requester
counters a bidder (a price, and a later or earlier deadline), the machine accepts, counters or
withdraws, and so on for at most ``rounds`` rounds, until ``close_at``. The deal is the award.

Both rule strategies concede by time, as Faratin, Sierra & Jennings (1998) describe: the offer at
round ``r`` of ``R`` moves from the opening towards the side's limit by ``(r / R) ** (1 / beta)`` of
the way — ``beta < 1`` holds out and concedes late (Boulware), ``beta > 1`` concedes early. They
accept an offer at least as good as their own next one; at the last round the machine makes its
limit its final offer, and the requester takes any offer inside its limit (a deal beats none).

The machine's limit is what the rule engine says a concession costs: never below the least price it
accepts at the deadline asked (cost, the capacity it keeps for better work, the owners' floor), and
never further below its rule price than the owners let it go — ``concession_bps`` for a stranger,
``stakeholder_concession_bps`` for one of its holders — plus ``slack_bps_per_h`` for each hour of
deadline beyond the call's that lets it fit the job into a quiet hour. The guard holds every offer,
the model's included, inside ``MachineBand``. Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.money import Micros, format_units
from machines.job import JobSpec
from machines.profile import Policy
from pricing.guard import DecisionPath, UnitsText, micros_of
from pricing.rules import BPS, Decision

__all__ = [
    "CounterProposal",
    "HaggleAsk",
    "HaggleMove",
    "HaggleRules",
    "MachineBand",
    "Move",
    "RequesterStrategy",
    "concede",
    "guard_counter",
    "machine_band",
    "machine_move",
    "requester_move",
    "requester_opening",
]

Move = Literal["counter", "accept", "withdraw"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HaggleRules(_Frozen):
    """A call's terms of negotiation: the requester may counter the bids it got."""

    rounds: int = Field(ge=1, le=10)
    """The requester counters a bidder at most this many times; each counter opens a round the machine answers."""
    close_at: int
    """Epoch ms (the market's clock) after which no negotiation message counts: the requester awards by then."""


class HaggleMove(_Frozen):
    """One side's move in a round, as the strategy (or the guard) decided it."""

    move: Move
    price: Micros | None = None
    """For counter and accept: the price proposed or accepted."""
    finish_by: int | None = None
    """Epoch ms: the deadline proposed or accepted."""
    why: str = ""


def concede(start: int, limit: int, step: int, steps: int, beta: float) -> int:
    """The offer at ``step`` of ``steps`` on the way from ``start`` to ``limit`` (either direction)."""
    if steps <= 0 or step >= steps:
        return limit
    share: float = (max(step, 0) / steps) ** (1 / beta)
    return round(start + (limit - start) * share)


# -- the machine's side ----------------------------------------------------------------------------


class MachineBand(_Frozen):
    """The prices a machine may agree to on a job at one deadline: every offer it makes, by rules or
    model, lies in ``[least, most]``."""

    least: int
    most: int
    opening: int
    """Its bid: where its concessions start."""
    least_why: str


def machine_band(rules: Decision, policy: Policy, *, opening: int, reserve: int, stakeholder: bool,
                 slack_h: float = 0.0) -> MachineBand | None:
    """The band for a counter at the deadline ``rules`` was decided at (``slack_h`` hours later than
    the call's), or None when the rules refuse the job at that deadline."""
    if rules.action != "bid" or rules.price is None or rules.cost is None:
        return None
    floor = max(rules.least or rules.cost.total, policy.price_floor, rules.cost.total)
    give = policy.stakeholder_concession_bps if stakeholder else policy.concession_bps
    give = min(give + round(max(slack_h, 0.0) * policy.slack_bps_per_h), BPS)
    reference = min(opening, rules.price)
    conceded = -(-reference * (BPS - give) // BPS)
    least, why = (floor, "least price at that deadline") if floor >= conceded else (
        conceded, f"{give / 100:g}% concession the owners allow {'a holder' if stakeholder else 'a stranger'}")
    most = min(v for v in (policy.price_ceiling, reserve, max(opening, least)) if v is not None)
    return MachineBand(least=least, most=max(most, least), opening=max(opening, least), least_why=why)


def machine_move(band: MachineBand | None, *, price: int, round: int, rounds: int, beta: float, finish_by: int,
                 tick: int) -> HaggleMove:
    """The rule strategy's answer to a requester's counter of ``price`` by ``finish_by`` at ``round``."""
    if band is None:
        return HaggleMove(move="withdraw", why="the rules refuse the job by that deadline; our last offer stands")
    target = _tick(concede(band.opening, band.least, round, rounds, beta), tick, band)
    if price > band.most:  # more than the owners' ceiling (or the reserve) lets it take: their cap, not ours to waive
        return HaggleMove(move="counter", price=band.most, finish_by=finish_by,
                          why=f"{format_units(band.most)} is the most we may take")
    if price >= target:
        return HaggleMove(move="accept", price=price, finish_by=finish_by,
                          why=f"{format_units(price)} is at least our offer for this round ({format_units(target)})")
    if round >= rounds:
        return HaggleMove(move="counter", price=target, finish_by=finish_by,
                          why=f"final offer: {format_units(target)}, our {band.least_why}")
    return HaggleMove(move="counter", price=target, finish_by=finish_by,
                      why=f"meeting you part way: {format_units(target)} (round {round} of {rounds})")


class HaggleAsk(_Frozen):
    """What the model is told about a counter: the job's terms, the rules' view, the band."""

    job: JobSpec
    requester: str
    round: int
    rounds: int
    opening: int
    rules_price: int
    """The rule strategy's offer for this round."""
    offered: int
    finish_h: float
    """Hours from now to the deadline they ask for."""
    slack_h: float
    """Hours that deadline is past (+) or before (-) the call's."""
    band: MachineBand | None
    note: str = ""


class CounterProposal(BaseModel):
    """The model's answer to a requester's counter."""

    move: Move = Field(description="accept their price, counter with yours, or withdraw (your last offer stands)")
    price: UnitsText | None = Field(default=None, description="For counter: your price in units as a decimal string, e.g. '42.50'")
    rationale: str = Field(default="", max_length=80, description="At most ten words, for the requester to read")



def guard_counter(band: MachineBand | None, proposal: CounterProposal, *, offered: int, finish_by: int, rules: HaggleMove,
                  tick: int) -> tuple[HaggleMove, DecisionPath]:
    """Hold the model's answer to a counter of ``offered`` inside the band: it may always withdraw;
    it may accept only a price inside the band; its counter is clamped into the band, and a counter
    at or below their offer is their offer accepted. ``rules`` is the rule strategy's answer, which
    replaces what cannot be mended."""
    said = proposal.rationale.strip()[:200] or "no rationale"
    if proposal.move == "withdraw":
        return HaggleMove(move="withdraw", why=f"model withdrew: {said}"), "llm"
    if band is None:
        return rules, "llm-clamped"
    if proposal.move == "accept":
        if band.least <= offered <= band.most:
            return HaggleMove(move="accept", price=offered, finish_by=finish_by, why=f"model accepted: {said}"), "llm"
        return rules.model_copy(update={"why": f"{rules.why} [model's accept below our {band.least_why} {format_units(band.least)} "
                                               "replaced by the rules]"}), "llm-clamped"
    asked = micros_of(proposal.price)
    if asked is None:
        return rules.model_copy(update={"why": f"{rules.why} [model countered without a price]"}), "rules-fallback"
    price = _tick(asked, tick, band)
    changed = price != asked
    if price <= offered:
        return HaggleMove(move="accept", price=offered, finish_by=finish_by,
                          why=f"model's counter {format_units(asked)} is at or below their offer: accepted"), "llm-clamped"
    why = f"model countered {format_units(price)}: {said}" + (
        f" [{format_units(asked)} held to the band {format_units(band.least)}–{format_units(band.most)}]" if changed else "")
    return HaggleMove(move="counter", price=price, finish_by=finish_by, why=why), "llm-clamped" if changed else "llm"


def _tick(price: int, tick: int, band: MachineBand) -> int:
    up = -(-price // tick) * tick
    return min(max(up if up <= band.most else price, band.least), band.most)


# -- the requester's side --------------------------------------------------------------------------


class RequesterStrategy(_Frozen):
    """How a requester haggles: how much below the best bid it opens, how fast it concedes, whether
    it trades deadline for price. ``urgency`` near 1 wants the job now and concedes early; near 0
    it can wait, opens low and offers a later deadline."""

    urgency: float = Field(default=0.5, ge=0, le=1)
    aim_bps: int = Field(default=2500, ge=0, le=BPS)
    """How far below the best bid a patient requester (urgency 0) opens; an urgent one opens nearer."""
    rounds: int = Field(default=3, ge=1, le=10)
    window_s: float = Field(default=240.0, gt=0)
    """Market seconds after the bids close that the negotiation may last."""
    slack_h: float = Field(default=2.0, ge=0)
    """Hours of deadline a patient requester offers to add in exchange for a lower price."""
    counter_top: int = Field(default=2, ge=1, le=10)
    """How many of the best bidders it counters at once."""

    @property
    def beta(self) -> float:
        return 0.5 + 2.5 * self.urgency

    def offers_slack(self) -> float:
        """Hours of deadline it adds to its counters (only a requester that can wait offers any)."""
        return self.slack_h * (1 - self.urgency) if self.urgency < 0.5 else 0.0


def requester_opening(strategy: RequesterStrategy, best: int, tick: int) -> int:
    """The first counter: below the best bid by the aim, the less the more urgent."""
    aim = round(strategy.aim_bps * (1 - strategy.urgency))
    return max(-(-best * (BPS - aim) // BPS) // tick * tick, tick)


def requester_move(strategy: RequesterStrategy, *, opening: int, limit: int, offer: int, round: int) -> HaggleMove:
    """The requester's answer to a machine's counter ``offer`` after ``round`` of the strategy's
    rounds: accept it (award), counter higher, or let the round limit close the haggle. ``limit`` is
    the most it will pay (its budget, or the best price it can take without haggling)."""
    if offer <= limit and round >= strategy.rounds:
        return HaggleMove(move="accept", price=offer, why="last round: within our budget")
    target = concede(opening, limit, round, strategy.rounds, strategy.beta)
    if offer <= target:
        return HaggleMove(move="accept", price=offer, why=f"{format_units(offer)} is within our offer for this round")
    if round >= strategy.rounds:
        return HaggleMove(move="withdraw", why=f"{format_units(offer)} is over our limit {format_units(limit)}")
    return HaggleMove(move="counter", price=target, why=f"we can go to {format_units(target)}")
