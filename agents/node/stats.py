"""What a machine node counts: calls heard, bids, jobs, money booked, the model's use and memory's."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ledger import settlement
from pricing.guard import ModelUse

__all__ = ["NodeStats"]


@dataclass
class NodeStats:
    cfps: int = 0
    unowned_calls: int = 0
    """Calls refused unheard: their signer does not own the account their job id names (``hub.jobids``)."""
    bids: int = 0
    declined_cfps: int = 0
    declines: Counter[str] = field(default_factory=Counter)
    """Rule codes that made the machine stay silent, e.g. ``decline.queue``."""
    awards: int = 0
    accepted: int = 0
    offers: int = 0
    """Offers sent to take over jobs other machines held and had not started."""
    moved_in: int = 0
    """Jobs awarded to this machine on its offer."""
    released: int = 0
    """Jobs this machine gave up before starting them, for another machine to do sooner."""
    haggles: Counter[str] = field(default_factory=Counter)
    """Answers to requesters' counters, by move: accept, counter, withdraw."""
    haggle_paths: Counter[str] = field(default_factory=Counter)
    """Those answers by the path that made them, as for bids."""
    haggle_dropped: Counter[str] = field(default_factory=Counter)
    """Negotiation messages refused, by reason: late, out_of_turn, unsealable, not_requester, malformed."""
    done: int = 0
    done_again: int = 0
    """``done`` said again for a job not paid in ``DONE_AGAIN_S`` (a lost message)."""
    failed: int = 0
    paid: int = 0
    busy_hours: float = 0.0
    revenue: int = 0
    energy: int = 0
    wear_cost: int = 0
    consumables: int = 0
    to_owners: int = 0
    settled: list[tuple[str, settlement.JobCosts]] = field(default_factory=list)
    paths: Counter[str] = field(default_factory=Counter)
    """Decisions by the path that made them: rules, llm, llm-clamped, rules-fallback, rules-fast-path."""
    model_calls: int = 0
    """Requests sent to the model."""
    model_decisions: int = 0
    """Decisions the model was asked for (one may take several requests)."""
    input_tokens: int = 0
    output_tokens: int = 0
    model_latency_ms: list[float] = field(default_factory=list)
    model_errors: Counter[str] = field(default_factory=Counter)
    """Why the model's answer was not used: timeout, invalid output, model error, transport error."""
    memory_priced: int = 0
    """Bids priced with a memory signal (similar past jobs)."""
    memory_records: int = 0
    memory_errors: int = 0
    """Memory operations that failed; the machine went on without memory for them."""
    memory_late: int = 0
    """Calls priced without memory because its answer came too late for the bid."""

    @property
    def costs(self) -> int:
        return self.energy + self.wear_cost + self.consumables

    def count_model(self, use: ModelUse) -> None:
        self.model_decisions += 1
        self.model_calls += use.calls
        self.input_tokens += use.input_tokens
        self.output_tokens += use.output_tokens
        self.model_latency_ms.append(use.latency_ms)
        if use.error:
            self.model_errors[use.error.split(":", 1)[0]] += 1
