"""Pure pricing: the rule engine (``rules``), the guard that bounds what a model proposes (``guard``),
and the records of what a machine heard and bid (``bids``). No I/O, no clock, no threads: a
decision is a function of the machine, the job and the market it is given."""

from pricing.bids import BidRecord, OpenCall
from pricing.guard import BidDecision, BidProposal, ModelUse, bounds, from_rules, guard
from pricing.rules import CostBreakdown, Decision, MachineStatus, MarketContext, MemorySignal, Rule, decide, job_cost

__all__ = [
    "BidDecision",
    "BidProposal",
    "BidRecord",
    "CostBreakdown",
    "Decision",
    "MachineStatus",
    "MarketContext",
    "MemorySignal",
    "ModelUse",
    "OpenCall",
    "Rule",
    "bounds",
    "decide",
    "from_rules",
    "guard",
    "job_cost",
]
