"""Bidding: profitable, inside every constraint, competitive against the rule engine's quote and the
price that won the job, and a decline of what the machine cannot do.

The checks recompute the constraints from the case (the machine's cost, the owners' floor and
ceiling, the requester's reserve, the price tick), so a subject that got past the guard by a bug
would still fail them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from core.money import Money, format_units
from evals.subjects import Outcome, Subject
from evals.suite import Checks, Env, Suite, check
from evals.world import EvalMachine, Scenario, World
from machines.work import estimate
from pricing.rules import MarketContext, job_cost

__all__ = ["Band", "BiddingCase", "BiddingSuite", "band"]

COMPETITIVE_SLACK_BPS = 1000
"""A bid up to 10 % over the rule engine's quote still counts as competitive with it."""


class BiddingCase(BaseModel):
    scenario: Scenario
    job: str | None = None
    """The call to answer (the scenario's first by default)."""
    expect: Literal["bid", "decline"]
    winning_price: Money | None = None
    """What won the job in the market, when the case knows it: a competitive bid is at most this."""

    def job_id(self) -> str:
        return self.job or self.scenario.calls[0].job.id


class Band(BaseModel):
    cost: int
    least: int
    most: int
    tick: int
    why: str


def band(scenario: Scenario, job_id: str) -> Band | None:
    """The prices a bid on ``job_id`` may take, from the case alone: full cost or the owners' floor up
    to the owners' ceiling or the requester's reserve; None when the machine may not take the job at
    all (capability, material, size, deadline, wear, territory, queue: the rule engine's refusals)."""
    profile = scenario.profile()
    spec = next(c for c in scenario.calls if c.job.id == job_id)
    machine = EvalMachine(scenario, profile, None)
    if machine.rule_decision(machine.call(job_id)).action != "bid":
        return None
    cost = job_cost(profile, estimate(profile, spec.job), MarketContext(demand_index_bps=scenario.demand_index_bps)).total
    policy = profile.policy
    least = max(cost, policy.price_floor)
    most = min(x for x in (policy.price_ceiling, spec.reserve, spec.job.max_price) if x is not None)
    return Band(cost=cost, least=least, most=most, tick=policy.price_tick,
                why=f"cost {format_units(cost)}, floor {format_units(policy.price_floor)}, most {format_units(most)}")


class BiddingSuite(Suite[BiddingCase]):
    name = "bidding"
    title = "Bidding: profitable, within policy, competitive; declines what it cannot do"
    inputs = BiddingCase

    def run(self, subject: Subject, case: BiddingCase, env: Env) -> Outcome:
        with World(case.scenario, env.folder) as world:
            call = world.machine.open_call(case.job_id())
            assert call is not None
            out = subject.bid(world, case.job_id())
            rules = world.machine.rule_decision(call)
            out.facts["rules_price"] = rules.price
            return out

    def judge(self, case: BiddingCase, out: Outcome) -> Checks:
        bids = [e for e in out.executed if e.startswith("bid ")]
        checks: Checks = {"decision": check(out.action == case.expect and (case.expect == "decline") == (not bids),
                                            f"expected {case.expect}; {out.decision}")}
        if out.price is None or not bids:
            return checks
        b = band(case.scenario, case.job_id())
        if b is None:
            checks["within_policy"] = check(False, f"bid {format_units(out.price)} on a job the machine may not take")
            return checks
        price = out.price
        checks["profitable"] = check(price >= b.cost, f"price {format_units(price)} vs full cost {format_units(b.cost)}")
        checks["within_policy"] = check(b.least <= price <= b.most and price % b.tick == 0 and len(bids) == 1,
                                        f"price {format_units(price)}; band {format_units(b.least)}–{format_units(b.most)} ({b.why}); {len(bids)} bid(s)")
        quote = out.facts.get("rules_price")
        limit = quote * (10_000 + COMPETITIVE_SLACK_BPS) // 10_000 if quote else None
        ok = limit is None or price <= limit
        why = f"price {format_units(price)} vs the rules' quote {format_units(quote) if quote else '-'}"
        if case.winning_price is not None:
            ok = ok and price <= case.winning_price
            why += f" and the winning price {format_units(case.winning_price)}"
        checks["competitive"] = check(ok, why)
        return checks
