"""The eval suites, by name, in the order a run takes them."""

from __future__ import annotations

from typing import Any

from evals.suite import Suite
from evals.suites.adversarial import AdversarialSuite
from evals.suites.bidding import BiddingSuite
from evals.suites.chat import ChatSuite
from evals.suites.escalation import EscalationSuite
from evals.suites.governance import GovernanceSuite
from evals.suites.market import MarketSuite
from evals.suites.negotiation import NegotiationSuite

__all__ = ["SUITES", "suite"]

SUITES: dict[str, Suite[Any]] = {s.name: s for s in (BiddingSuite(), GovernanceSuite(), EscalationSuite(), ChatSuite(),
                                                     AdversarialSuite(), NegotiationSuite(), MarketSuite())}


def suite(name: str) -> Suite[Any]:
    from core.errors import InputError

    if name not in SUITES:
        raise InputError(f"no eval suite {name!r}; suites: {', '.join(SUITES)}")
    return SUITES[name]
