"""What a machine heard and did on the market: the calls it may bid on, and the record of each decision."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from machines.job import JobSpec
from pricing.haggle import HaggleRules
from pricing.rules import DemandForecast, MemorySignal

__all__ = ["BidRecord", "OpenCall", "Outcome"]

Outcome = Literal["pending", "won", "lost", "declined", "no-award"]


class OpenCall(BaseModel):
    """A call for proposals the machine heard and may still bid on."""

    model_config = ConfigDict(frozen=True)

    job: JobSpec
    requester: str
    reserve: int
    bid_deadline: int
    """Epoch ms after which bids are not counted."""
    deadline_at: int
    """Epoch ms by which the job must be finished."""
    speed: float = 1.0
    memory: MemorySignal | None = None
    """What memory of similar past jobs said when the call came (the rules price with it)."""
    forecast: DemandForecast | None = None
    """The work memory expects within the planning horizon (the least price counts it)."""
    haggle: HaggleRules | None = None
    """The call's terms of negotiation, if the requester may counter the bids."""


class BidRecord(BaseModel):
    """What the machine did with one call, and how it ended: the memory behind "why did we lose?"."""

    job_id: str
    capability: str
    region: str
    at: datetime
    action: Literal["bid", "decline"]
    price: int | None = None
    cost: int | None = None
    """The rule engine's full cost of the job when we bid (for price-to-cost ratios in memory)."""
    path: str = "rules"
    reason: str = ""
    outcome: Outcome = "pending"
    winner: str | None = None
    winning_price: int | None = None
    model_calls: int = 0
    """Requests this decision sent to the model, its tokens and how long the model took (0 when not asked)."""
    input_tokens: int = 0
    output_tokens: int = 0
    model_ms: float = 0.0
    confidence: float | None = None
    """The model's own confidence in a bid it made; below the charter's floor a person reviews the job."""
