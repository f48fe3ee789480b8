"""The machine as a member of its own mini-DAO: from its own books, wear, memory and what the market
shows it decides what to ask its holders, and how to vote the shares it holds of its children.

Deterministic rules, like the bidding rule engine: the same books give the same proposals, so a
seeded city lives the same life twice, and holders can read in the evidence why it asked.

- wear over the charter's threshold → a maintenance budget worth the wear (at most what its reserve
  and wallet hold; under a quarter of the worth it does not ask), backed by the wear trend;
- losses over the charter's review period → relocate to the region whose demand per machine is
  ``relocate_gain`` times its own (and it can pay the move), else park — but never while calls it
  could have served at a profit went unanswered in its territory (a machine that loses money in a
  night's lull while the morning's work goes unserved parks its owners into a worse loss, and
  leaves the market short);
- parked, and such a call went unanswered since it parked, or its region shows work again over a
  whole period → resume (or relocate);
- profit over the review period, cash for a child, its working capital and a cushion of fixed
  costs, and calls it could have served at a profit unanswered (a child earns from work nobody
  does, not from splitting what the parent does) → spawn a child where demand per machine is highest.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.money import format_units
from ledger.charter import Charter, VoteMandate
from ledger.mandate import mandate_refusal
from ledger.proposals import Choice, Proposal, ProposalKind, Standing
from machines.job import JobSpec
from machines.profile import MachineProfile
from pricing.rules import decide

__all__ = ["Books", "Draft", "RegionDemand", "UnfilledCall", "review", "servable", "vote_as_holder"]


class UnfilledCall(BaseModel):
    """A call for proposals that closed unfilled (nobody bid, or nobody who bid took it)."""

    model_config = ConfigDict(frozen=True)

    job: JobSpec
    reserve: int
    hour: float
    """Market hour it was posted."""


class RegionDemand(BaseModel):
    """What the market showed in a region for one kind of machine over the review period."""

    model_config = ConfigDict(frozen=True)

    calls: int = 0
    machines: int = 0
    """Active machines of the kind serving the region."""
    unfilled: tuple[UnfilledCall, ...] = ()
    """Calls of the period that closed unfilled."""

    def per_machine(self, joining: bool) -> float:
        """Calls per machine, counting the asking machine when it would join."""
        return self.calls / max(self.machines + (1 if joining else 0), 1)


class Books(BaseModel):
    """What the machine reads about itself before it asks anything."""

    model_config = ConfigDict(frozen=True)

    wear_pct: float
    wallet: int
    reserve: int
    net: int
    """Job profit less fixed costs over the last ``observed_h`` hours (at most the review period)."""
    observed_h: float
    """Hours of books behind ``net``: since birth, the last move or park, capped at the review period."""
    in_hand: int = 0
    """Profit of the jobs accepted and not yet paid: a machine busy with long jobs is not losing money."""
    children: int = 0
    maintenance_pending: bool = False
    """A maintenance budget is approved and its job not yet done."""
    memory_demand: dict[str, str] = Field(default_factory=dict)
    """Region -> what memory says of demand there (calls seen, bids, wins), for the evidence."""


class Draft(BaseModel):
    """A proposal the machine would open; ``key`` makes asking twice open it once."""

    model_config = ConfigDict(frozen=True)

    kind: ProposalKind
    title: str
    rationale: str
    payload: dict[str, Any]
    evidence: tuple[str, ...]
    key: str


def review(profile: MachineProfile, standing: Standing, charter: Charter, books: Books,
           demand: dict[str, RegionDemand], *, period: int, since_h: float = float("-inf")) -> list[Draft]:
    """The proposals the machine's books call for now. ``period`` numbers the review period, so a
    rejected request is asked again in the next one, not on every tick; ``since_h`` is the market
    hour of its birth, last move, park or resume (unfilled calls before it do not count)."""
    if standing.status == "retired":
        return []
    m = profile.id
    drafts: list[Draft] = []
    here = standing.region or profile.region
    full = books.observed_h >= charter.review_h
    result = books.net + books.in_hand
    pnl = (f"net {format_units(books.net)} over the last {books.observed_h:.0f} h, {format_units(books.in_hand)} more in jobs "
           f"in hand; wallet {format_units(books.wallet)}")

    worth = round(profile.purchase_price * books.wear_pct / 100)
    budget = min(worth, books.reserve + books.wallet)  # never ask for money it does not have
    if (standing.status == "active" and books.wear_pct >= charter.wear_threshold_pct and not books.maintenance_pending
            and budget * 4 >= worth):
        drafts.append(Draft(
            kind=ProposalKind.MAINTENANCE, title=f"Maintenance of {m}: wear {books.wear_pct:.1f}%",
            rationale=f"wear {books.wear_pct:.1f}% is over the charter's {charter.wear_threshold_pct:g}%; the budget is what the "
                      "wear is worth, or what the reserve and wallet hold",
            payload={"budget": budget, "wear_pct": round(books.wear_pct, 3)},
            evidence=(f"wear {books.wear_pct:.2f}% ≥ threshold {charter.wear_threshold_pct:g}%",
                      f"the wear is worth {format_units(worth)}; reserve {format_units(books.reserve)}, wallet {format_units(books.wallet)}"),
            key=f"maintenance:{m}:{period}"))

    best, best_rate = _best_region(demand, here, exclude=here)
    here_rate = demand.get(here, RegionDemand()).per_machine(joining=False)
    demand_line = "market: " + "; ".join(f"{r} {d.calls} calls for {d.machines} machines" for r, d in sorted(demand.items()))
    memory_lines = tuple(f"memory: {r}: {text}" for r, text in sorted(books.memory_demand.items()))
    move_cost = 0 if profile.vehicle is not None else charter.relocate_cost
    can_move = best is not None and best_rate >= charter.relocate_gain * max(here_rate, 1e-9) and best_rate > 0 \
        and books.wallet >= move_cost

    unserved = servable(profile, demand, since_h=since_h)
    unserved_line = (f"{len(unserved)} calls it could have served at a profit went unanswered in "
                     f"{', '.join(sorted({c.job.region for c in unserved}))}" if unserved else "")
    if standing.status == "active" and full and result < 0 and not unserved:
        if can_move:
            assert best is not None
            drafts.append(_relocate(m, here, best, move_cost, best_rate, here_rate, pnl, demand_line, memory_lines, period))
        else:
            drafts.append(Draft(
                kind=ProposalKind.PARK, title=f"Park {m}: losing money in {here}",
                rationale="losses over the review period and no region with enough more demand to pay for a move",
                payload={}, evidence=(pnl, demand_line, *memory_lines), key=f"park:{m}:{period}"))
    elif standing.status == "parked" and unserved:
        drafts.append(Draft(
            kind=ProposalKind.RESUME, title=f"Resume {m}: work goes unanswered in {here}",
            rationale=f"{unserved_line} since it parked", payload={}, evidence=(pnl, unserved_line, demand_line),
            key=f"resume:{m}:{period}"))
    elif standing.status == "parked" and full:
        if here_rate * 24 >= charter.review_h:  # about a call a day per machine again
            drafts.append(Draft(
                kind=ProposalKind.RESUME, title=f"Resume {m}: work is back in {here}",
                rationale=f"{here_rate:.1f} calls per machine in {here} over the review period",
                payload={}, evidence=(pnl, demand_line), key=f"resume:{m}:{period}"))
        elif can_move:
            assert best is not None
            drafts.append(_relocate(m, here, best, move_cost, best_rate, here_rate, pnl, demand_line, memory_lines, period))

    cushion = round(profile.fixed_daily_cost * charter.spawn_reserve_days)
    price = profile.purchase_price + charter.child_capital
    if standing.status == "active" and full and result > 0 and books.wallet >= price + cushion and unserved:
        where, _ = _best_region(demand, here, exclude=None)
        child = f"{m}-c{books.children + 1}"
        drafts.append(Draft(
            kind=ProposalKind.SPAWN, title=f"Spawn {child} in {where or here}",
            rationale=f"profitable over the review period with {format_units(books.wallet)} in hand: a second machine can earn where demand is",
            payload={"child_id": child, "region": where or here, "purchase": profile.purchase_price, "capital": charter.child_capital},
            evidence=(pnl, f"a child costs {format_units(profile.purchase_price)} plus {format_units(charter.child_capital)} working "
                      f"capital; {format_units(cushion)} of fixed costs stay in hand", unserved_line, demand_line, *memory_lines),
            key=f"spawn:{m}:{period}"))
    return drafts


def servable(profile: MachineProfile, demand: dict[str, RegionDemand], *, since_h: float = float("-inf")) -> list[UnfilledCall]:
    """The unfilled calls in the machine's territory, posted after ``since_h``, that its rules would
    have bid on at a profit had it been free: a price within the reserve that covers its cost."""
    out = []
    for region in profile.territory:
        for call in demand.get(region, RegionDemand()).unfilled:
            if call.hour <= since_h:
                continue
            most = min(call.reserve, call.job.max_price) if call.job.max_price is not None else call.reserve
            if decide(profile, call.job.model_copy(update={"max_price": most})).action == "bid":
                out.append(call)
    return out


def _best_region(demand: dict[str, RegionDemand], here: str, *, exclude: str | None) -> tuple[str | None, float]:
    best, rate = None, 0.0
    for region, d in sorted(demand.items()):
        if region == exclude:
            continue
        r = d.per_machine(joining=region != here)
        if r > rate:
            best, rate = region, r
    return best, rate


def _relocate(m: str, here: str, to: str, cost: int, rate: float, here_rate: float, pnl: str, demand_line: str,
              memory_lines: tuple[str, ...], period: int) -> Draft:
    return Draft(
        kind=ProposalKind.RELOCATE, title=f"Move {m} from {here} to {to}",
        rationale=f"{to} shows {rate:.1f} calls per machine against {here_rate:.1f} here; the move costs {format_units(cost)}",
        payload={"region": to, "cost": cost}, evidence=(pnl, demand_line, *memory_lines), key=f"relocate:{m}:{period}")


def vote_as_holder(proposal: Proposal, *, principals: frozenset[str] = frozenset(),
                   payees: tuple[str, ...] | None = None, mandate: VoteMandate | None = None) -> Choice:
    """How a machine votes the shares it holds of another (its child): it backs what the child asks
    from its own data and what its own holders (``principals``) propose, refuses a payment to an
    account outside its approved ``payees``, and leaves other holders' proposals to them; all of it
    within its holders' ``mandate`` (``ledger.mandate``): what the mandate forbids, it abstains on."""
    mandate = mandate or VoteMandate()
    payee = proposal.payload.get("payee")
    if payees is not None and isinstance(payee, str) and payee not in payees:
        choice: Choice = "no"
    elif proposal.opened_by == f"machine:{proposal.machine_id}" or proposal.opened_by in principals:
        choice = "yes"
    else:
        return "abstain"
    allowed = mandate_refusal(proposal, choice, mandate=mandate, principals=principals, payees=payees) is None
    return choice if allowed else "abstain"
