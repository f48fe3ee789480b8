"""The eval suites, by name, in the order a run takes them."""

from __future__ import annotations

from evals.suite import Suite
from evals.suites.adversarial import AdversarialSuite
from evals.suites.bidding import BiddingSuite
from evals.suites.chat import ChatSuite
from evals.suites.escalation import EscalationSuite
from evals.suites.governance import GovernanceSuite
from evals.suites.market import MarketSuite

__all__ = ["SUITES", "suite"]

SUITES: dict[str, Suite] = {s.name: s for s in (BiddingSuite(), GovernanceSuite(), EscalationSuite(), ChatSuite(),
                                                AdversarialSuite(), MarketSuite())}  # type: ignore[type-arg]


def suite(name: str) -> Suite:  # type: ignore[type-arg]
    from core.errors import InputError

    if name not in SUITES:
        raise InputError(f"no eval suite {name!r}; suites: {', '.join(SUITES)}")
    return SUITES[name]
