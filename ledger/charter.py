"""A machine's charter: the rules its holders agreed to be governed by, and by which it lives or dies.

Set when the machine is registered (a child inherits its parent's). Voting rules decide proposals;
the thresholds are what the machine reads when it asks its holders for something on its own, and
what the market reads to charge its fixed costs, pay out its profit and declare it dead. All
durations are market hours (a simulated city runs them faster than real time).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.money import Money

__all__ = ["MONEY_OR_LIFE", "Charter", "VoteMandate"]


class VoteMandate(BaseModel):
    """How a machine may vote the shares it holds of other machines (its children): its holders'
    wealth held in trust, so their mandate, default-deny. A kind not in ``kinds`` gets no vote at
    all; a yes on a proposal that moves money or retires or reprices a machine
    (``MONEY_OR_LIFE``) only when one of the machine's own holders opened it, or when the child
    itself asked for one of ``child_may_ask`` from its own books (the holders' standing ask)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: tuple[str, ...] = ("maintenance", "pricing", "territory", "payout", "expense", "relocate", "park", "resume")
    """Proposal kinds it votes on; any other (by default: spawning and retiring a machine, a
    collective's delegation), it abstains: its holders vote those themselves."""
    child_may_ask: tuple[str, ...] = ("maintenance", "relocate")
    """Of the kinds that move money, what it may back when the child itself proposed it."""


MONEY_OR_LIFE = frozenset({"maintenance", "payout", "expense", "spawn", "relocate", "retire", "pricing"})
"""Proposal kinds that move money or retire or reprice a machine: no yes from a machine's vote unless
its own holders asked (``VoteMandate``)."""


class Charter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quorum_bps: int = Field(default=5000, ge=1, le=10_000)
    """Share units that must vote (yes, no or abstain) for a decision to count."""
    threshold_bps: int = Field(default=5000, ge=0, lt=10_000)
    """A proposal passes when yes is more than this share of yes + no."""
    window_h: float = Field(default=48.0, gt=0)
    """How long a proposal stays open; it closes early once no remaining vote can change the result."""
    wear_threshold_pct: float = Field(default=60.0, gt=0, le=100)
    """Wear above which the machine asks its holders for a maintenance budget."""
    review_h: float = Field(default=72.0, gt=0)
    """The period over which losses or profits count as sustained."""
    relocate_gain: float = Field(default=1.5, ge=1.0)
    """A losing machine moves only to a region with this many times its region's demand per machine."""
    spawn_reserve_days: float = Field(default=7.0, ge=0)
    """Fixed costs (in days) a parent must still hold after paying for a child."""
    child_capital: Money = 100_000_000
    """Working capital a parent gives its child, on top of the child's purchase price."""
    child_shares: Literal["parent", "holders"] = "parent"
    """Who owns a child: the parent machine itself, or the parent's holders in their proportions."""
    retain_bps: int = Field(default=2000, ge=0, le=10_000)
    """Payout policy: share of each job's profit (after its share of fixed costs) the machine keeps."""
    grace_days: float = Field(default=3.0, gt=0)
    """Days a machine may go unable to pay its fixed costs before it is retired."""
    park_fixed_bps: int = Field(default=3000, ge=0, le=10_000)
    """Share of the fixed costs a parked machine still pays (storage, insurance)."""
    relocate_cost: Money = 20_000_000
    """What moving a workshop machine to another region costs (a vehicle drives there instead)."""
    salvage_bps: int = Field(default=3000, ge=0, le=10_000)
    """Salvage value of a retired machine, as a share of its purchase price less its wear."""
    handoff_wait_h: float = Field(default=2.0, gt=0)
    """How long a handoff waits for an operator to take over before the machine escalates: it stays in
    its safe state and gives the job up, so the runner-up takes it over."""
    review_above: Money | None = None
    """Jobs priced above this wait for a person's go-ahead before they start."""
    review_capabilities: tuple[str, ...] = ()
    """Capabilities whose jobs always wait for a person's go-ahead."""
    envelope_hours: float = Field(default=24.0, gt=0)
    """The machine's normal envelope: a longer job waits for a person's go-ahead (so does a part that
    fills more than 90 % of the build volume)."""
    confidence_floor: float = Field(default=0.5, ge=0, le=1)
    """A job the model bid on with less confidence than this waits for a person's go-ahead."""
    vote_mandate: VoteMandate = VoteMandate()
    """How the machine may vote the shares it holds of its children."""
