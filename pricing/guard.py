"""The rule engine's check on a model's bid: what a model proposes, the policy disposes.

A model may decline anything, and may bid on what the rule engine would bid on, at a price it
chooses between the machine's least price (cost, and the owners' floor) and the most it may ask
(the owners' ceiling, the requester's reserve). Outside that band the price is clamped; a bid on
a job the rules refuse (capability, capacity, deadline, wear, territory) is replaced by the rules'
decline. Every decision says which path made it and why. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.errors import InvalidAmount
from core.money import format_units, parse_units
from machines.profile import Policy
from pricing.rules import Decision

__all__ = ["BidDecision", "BidProposal", "DecisionPath", "ModelUse", "PriceBounds", "UnitsText", "bounds", "from_rules", "guard",
           "micros_of"]

DecisionPath = Literal["rules", "llm", "llm-clamped", "rules-fallback", "rules-fast-path"]
"""``rules``: no model configured. ``rules-fast-path``: a routine job, or one the rules refuse, that
skipped the model. ``rules-fallback``: the model failed (timeout, error, invalid output, refusal).
``llm``: the model's decision as it gave it. ``llm-clamped``: the model's decision, changed by the rules."""

_UNITS = re.compile(r"^\s*\d{1,12}(\.\d{1,6})?\s*$")


def _units_text(value: str) -> str:
    if not _UNITS.match(value):
        raise ValueError("price must be a decimal number of units such as '42.50'")
    return value


UnitsText = Annotated[str, AfterValidator(_units_text)]
"""A model's price as it must write it: a decimal number of units (``'42.50'``)."""


class BidProposal(BaseModel):
    """The model's answer to a call for proposals."""

    action: Literal["bid", "decline"]
    price: UnitsText | None = Field(default=None, description="Bid price in units as a decimal string, e.g. '42.50'; omit to decline")
    eta_h: float | None = Field(default=None, ge=0, description="Hours from now until the job would be finished")
    rationale: str = Field(default="", max_length=80, description="At most ten words: why this price, or why decline")
    confidence: float | None = Field(default=None, ge=0, le=1, description=(
        "How sure you are this job is one the machine can do well, 0 to 1; below the charter's floor a person "
        "reviews the job before it starts"))

    def price_micros(self) -> int | None:
        return micros_of(self.price)




def micros_of(price: str | None) -> int | None:
    """A model's price in micro-units; None when it gave none or none that parses."""
    try:
        return parse_units(price) if price is not None else None
    except InvalidAmount:
        return None


class ModelUse(BaseModel):
    """What asking the model cost one decision."""

    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: float = 0.0
    error: str = ""
    """Why the model's answer was not used, when it was not."""


class BidDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Literal["bid", "decline"]
    price: int | None = None
    eta_h: float | None = None
    path: DecisionPath
    why: str
    rules: Decision
    """The rule engine's own decision on the same job, the baseline every path is checked against."""
    proposal: BidProposal | None = None
    model: ModelUse | None = None

    @property
    def variable_cost(self) -> int:
        return self.rules.cost.variable if self.rules.cost else 0


class PriceBounds(BaseModel):
    model_config = ConfigDict(frozen=True)

    least: int
    """Cost, or the owners' floor if higher: no bid below it."""
    most: int
    """The owners' ceiling or the requester's reserve, whichever is lower: no bid above it."""
    least_why: str
    most_why: str


def bounds(rules: Decision, policy: Policy, reserve: int | None) -> PriceBounds | None:
    """The band a bid's price must fall in, or ``None`` when the rules refuse the job."""
    if rules.action != "bid" or rules.cost is None:
        return None
    cost = rules.cost.total
    least, least_why = (policy.price_floor, "the owners' floor") if policy.price_floor > cost else (cost, "cost")
    candidates = [(v, w) for v, w in ((policy.price_ceiling, "the owners' ceiling"), (reserve, "the requester's reserve")) if v is not None]
    most, most_why = min(candidates, default=(rules.price or least, "the rule price"))
    return PriceBounds(least=least, most=most, least_why=least_why, most_why=most_why)


def from_rules(rules: Decision, path: DecisionPath, why: str = "", model: ModelUse | None = None) -> BidDecision:
    why = why or rules.reason
    return BidDecision(action=rules.action, price=rules.price, eta_h=rules.eta_h, path=path, why=why, rules=rules, model=model)


def guard(rules: Decision, proposal: BidProposal, policy: Policy, reserve: int | None, model: ModelUse | None = None) -> BidDecision:
    """Check the model's ``proposal`` against the rule engine's decision and the owners' policy."""
    said = proposal.rationale.strip()[:200] or "no rationale"
    if proposal.action == "decline":
        return BidDecision(action="decline", path="llm", why=f"model declined: {said}", rules=rules, proposal=proposal, model=model)
    band = bounds(rules, policy, reserve)
    if band is None or band.least > band.most:
        return BidDecision(action="decline", path="llm-clamped", why=f"model's bid replaced by the rules: {rules.reason}",
                           rules=rules, proposal=proposal, model=model, eta_h=rules.eta_h)
    asked = proposal.price_micros()
    if asked is None:  # a bid without a price: the model gave no usable answer
        return from_rules(rules, "rules-fallback", f"model bid without a price; rules: {rules.reason}", model)
    changes = []
    price = asked
    if price < band.least:
        price = band.least
        changes.append(f"price {format_units(asked)} raised to {band.least_why} {format_units(band.least)}")
    elif price > band.most:
        price = band.most
        changes.append(f"price {format_units(asked)} lowered to {band.most_why} {format_units(band.most)}")
    tick = policy.price_tick
    if price % tick:
        rounded = -(-price // tick) * tick
        price = rounded if rounded <= band.most else price - price % tick
    eta = rules.eta_h  # the schedule's estimate: the one the deadline checks were made with
    if proposal.eta_h is not None and eta is not None and proposal.eta_h < eta:
        changes.append(f"ETA {proposal.eta_h:g} h raised to the physical estimate {eta:g} h")
    path: DecisionPath = "llm-clamped" if changes else "llm"
    why = f"model bid {format_units(price)}: {said}" + (f" [{'; '.join(changes)}]" if changes else "")
    return BidDecision(action="bid", price=price, eta_h=eta, path=path, why=why, rules=rules, proposal=proposal, model=model)
