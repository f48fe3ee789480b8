"""What memory tells the machine: a price from similar past jobs, its wear trend, the demand it saw.

Each signal is computed from stored records only — the same memory gives the same answer — so the
rule engine can price with it on the critical path and the fallback path learns as the model does.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from statistics import median
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from core.money import format_units
from machines.job import JobSpec
from machines.profile import Policy
from memory.records import MemoryItem, MemoryKind
from pricing.rules import BPS, DemandForecast, MemorySignal

if TYPE_CHECKING:
    from memory.records import MemoryRecord
    from memory.store import MachineMemory
    from pricing.bids import BidRecord

__all__ = ["DemandLog", "WearTrend", "demand_forecast", "job_text", "outcome_item", "price_signal", "recall_for_bid", "trend_of",
           "wear_item", "wear_trend"]

SIMILAR = 12
"""Past jobs a price signal looks at."""
LOSING, WINNING = 1 / 3, 2 / 3


def job_text(job: JobSpec) -> str:
    """The job as memory embeds it: its structured fields only, rounded and short (embedding costs
    per token). The requester's free-text description is left out, so nothing a requester writes
    is stored or steers similarity."""
    parts = [f"{job.kind.value} {job.capability} in {job.region}"]
    if job.material is not None and job.size_mm is not None and job.amount is not None:
        parts.append(f"{job.material} {'×'.join(f'{d:.0f}' for d in job.size_mm)} mm, {job.amount:.0f}")
    if job.pickup is not None and job.dropoff is not None:
        parts.append(f"{job.pickup.distance_to(job.dropoff):.0f} km, {job.payload_kg:.0f} kg, {job.passengers} passengers")
    parts.append(f"due {job.deadline_h:.0f} h")
    return ", ".join(parts)


def outcome_item(job: JobSpec, record: BidRecord) -> MemoryItem | None:
    """The memory of a job we bid on, once its outcome is known."""
    if record.price is None or record.outcome not in ("won", "lost", "no-award"):
        return None
    cost = record.cost or 0
    ratio = f" ({record.price / cost:.2f}× our cost {format_units(cost)})" if cost else ""
    if record.outcome == "won":
        how = f"won at {format_units(record.price)}, profit {format_units(record.price - cost)}" if cost else "won"
    elif record.outcome == "lost" and record.winning_price is not None:
        wr = f" ({record.winning_price / cost:.2f}× our cost)" if cost else ""
        how = f"lost to {record.winner} at {format_units(record.winning_price)}{wr}"
    else:
        how = "no machine was awarded it"
    text = f"job {record.job_id}: {job_text(job)}. We bid {format_units(record.price)}{ratio} via {record.path}; {how}."
    meta: dict[str, Any] = {"job_id": record.job_id, "capability": job.capability, "region": job.region,
                            "outcome": record.outcome, "price": record.price, "cost": cost, "path": record.path}
    if record.winning_price is not None:
        meta.update(winning_price=record.winning_price, winner=record.winner or "")
    if record.outcome == "won" and cost:
        meta["profit"] = record.price - cost
    return MemoryItem(text, MemoryKind.JOB_OUTCOME, "market", meta, key=job_text(job))


def price_signal(memory: MachineMemory, job: JobSpec, policy: Policy, *, k: int = SIMILAR) -> MemorySignal | None:
    """The price-to-cost ratio the outcomes of the ``k`` most similar past jobs point to, or None
    when memory holds too few of them (or the policy does not learn from memory).

    Lost most of them: just under the winners' median ratio. Won most: a step over our own winning
    median — the machine keeps raising while it keeps winning. In between: hold at the ratio that
    won. The rule engine then keeps the result inside the policy's demand bounds, floor and ceiling."""
    if not policy.learn_from_memory:
        return None
    found = memory.similar_outcomes(job_text(job), job.capability, k=k)
    samples = [r for r in found if r.metadata.get("outcome") in ("won", "lost") and r.metadata.get("cost", 0) > 0]
    if len(samples) < policy.memory_min_samples:
        return None
    won = [r.metadata["price"] / r.metadata["cost"] for r in samples if r.metadata["outcome"] == "won"]
    beaten = [r.metadata["winning_price"] / r.metadata["cost"] for r in samples
              if r.metadata["outcome"] == "lost" and r.metadata.get("winning_price")]
    rate = len(won) / len(samples)
    head = f"won {len(won)} of {len(samples)} similar jobs"
    if rate <= LOSING and beaten:
        ref = median(beaten)
        target = ref * (BPS - policy.memory_undercut_bps) / BPS
        detail = f"{head}; winners bid {ref:.2f}× cost, so {target:.2f}×"
    elif rate >= WINNING and won:
        ref = median(won)
        target = ref * (BPS + policy.memory_raise_bps) / BPS
        detail = f"{head} at {ref:.2f}× cost, so try {target:.2f}×"
    elif won:
        target = median(won)
        detail = f"{head}; hold at the {target:.2f}× cost that won"
    else:
        return None
    return MemorySignal(target_bps=max(round(target * BPS), 1), samples=len(samples), wins=len(won), detail=detail,
                        cases=tuple(f"[{r.ref}] {r.text}" for r in samples[:5]))


def demand_forecast(memory: MachineMemory, job: JobSpec, policy: Policy, now: datetime, job_hours: float) -> DemandForecast | None:
    """The work like ``job`` the machine won at the coming ``plan_horizon_h`` hours of the day, the
    last time it saw them (one demand record per hour of day, region and capability: the newest
    wins), at ``job_hours`` each; None when memory holds none of those hours (a machine's first day)."""
    hours = {(now + timedelta(hours=i)).hour for i in range(max(math.ceil(policy.plan_horizon_h), 1))}
    rows = [r for r in memory.recent(kind=MemoryKind.DEMAND, capability=job.capability, region=job.region, limit=48)
            if r.metadata.get("hour") in hours and r.at < now]
    if not rows:
        return None
    wins = sum(int(r.metadata.get("wins", 0)) for r in rows)
    return DemandForecast(wins=wins, hours=round(wins * job_hours, 4),
                          detail=f"won {wins} like it at these hours last time, {len(rows)} of {len(hours)} hours remembered")


def recall_for_bid(memory: MachineMemory, job: JobSpec, policy: Policy, now: datetime,
                   job_hours: float) -> tuple[MemorySignal | None, DemandForecast | None]:
    """What the bidding path reads from memory for a call, in one trip off the mailbox thread."""
    return price_signal(memory, job, policy), demand_forecast(memory, job, policy, now, job_hours)


# -- wear -----------------------------------------------------------------------------------------

def operator_item(machine_id: str, operator: str, command: str, args: dict[str, Any], ok: bool, result: str) -> MemoryItem:
    """An operator's command, remembered so the machine can say later who did what to it, and how it went."""
    said = ", ".join(f"{k}={v}" for k, v in args.items() if v is not None)
    text = f"operator {operator} sent {command}{f' ({said})' if said else ''} to {machine_id}: {'done' if ok else 'refused'} — {result}"
    return MemoryItem(text[:1000], MemoryKind.OPERATOR, operator,
                      {"command": command, "ok": ok, "operator": operator}, key=f"operator command {command}")


def wear_item(job_id: str, capability: str, wear_pct: float, delta: float, hours: float) -> MemoryItem:
    """A wear observation. It is embedded by its topic (``key``), not its numbers — a search for
    wear finds it, the numbers are metadata — so one cached vector serves them all."""
    text = f"wear {wear_pct:.2f}% after job {job_id} ({capability}, {hours:.2f} h of work, +{delta:.3f} points)"
    return MemoryItem(text, MemoryKind.WEAR, "telemetry",
                      {"job_id": job_id, "capability": capability, "wear_pct": round(wear_pct, 4), "delta": round(delta, 4), "hours": round(hours, 4)},
                      key=f"wear of the machine after a {capability} job")


class WearTrend(BaseModel):
    """Wear over the last observations, for a maintenance proposal and for stakeholders."""

    observations: list[tuple[str, datetime, float]]
    """(memory ref, time, wear %) oldest first."""
    per_job: float
    """Least-squares slope: wear points gained per job."""
    accelerating: bool
    """The later half of the jobs wore the machine faster than the earlier half."""
    jobs_to_limit: int | None
    rising: bool
    summary: str

    @property
    def refs(self) -> list[str]:
        return [ref for ref, _, _ in self.observations]


def wear_trend(memory: MachineMemory, limit_pct: float, *, last: int = 20) -> WearTrend | None:
    """The trend of the last ``last`` wear observations; None with fewer than three."""
    return trend_of(memory.recent(kind=MemoryKind.WEAR, limit=last), limit_pct)


def trend_of(obs: list[MemoryRecord], limit_pct: float) -> WearTrend | None:
    """The trend of wear observations, oldest first."""
    if len(obs) < 3:
        return None
    ys = [float(r.metadata.get("wear_pct", 0.0)) for r in obs]
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    slope = sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))
    deltas = [float(r.metadata.get("delta", 0.0)) for r in obs]
    half = n // 2
    accelerating = sum(deltas[half:]) / (n - half) > 1.1 * (sum(deltas[:half]) / half) if half and sum(deltas[:half]) > 0 else False
    rising = slope > 0 and ys[-1] > ys[0]
    to_limit = int((limit_pct - ys[-1]) / slope) if rising and ys[-1] < limit_pct else (0 if ys[-1] >= limit_pct else None)
    summary = (f"wear went from {ys[0]:.2f}% to {ys[-1]:.2f}% over the last {n} jobs ({slope:+.3f} points a job"
               f"{', accelerating' if accelerating else ''})")
    if to_limit is not None:
        summary += f"; at this rate the {limit_pct:g}% limit is {to_limit} jobs away"
    summary += " [" + ", ".join(r.ref for r in obs) + "]"
    return WearTrend(observations=[(r.ref, r.at, y) for r, y in zip(obs, ys, strict=True)], per_job=round(slope, 4),
                     accelerating=accelerating, jobs_to_limit=to_limit, rising=rising, summary=summary)


# -- demand ---------------------------------------------------------------------------------------

class DemandLog:
    """Calls seen, bids and wins per market hour, region and capability; each finished hour becomes
    one demand record (fill rates by hour of day for pricing and relocation)."""

    def __init__(self) -> None:
        self._hour: datetime | None = None
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def count(self, at: datetime, region: str, capability: str, what: str) -> list[MemoryItem]:
        """Count ``what`` (calls, bids, wins); returns the records of an hour that just ended."""
        hour = at.replace(minute=0, second=0, microsecond=0)
        done = self.flush() if self._hour is not None and hour != self._hour else []
        self._hour = hour
        self._counts[(region, capability, what)] += 1
        return done

    def flush(self) -> list[MemoryItem]:
        if self._hour is None or not self._counts:
            return []
        hour, counts = self._hour, self._counts
        self._counts = Counter()
        items = []
        for region, capability in sorted({(r, c) for r, c, _ in counts}):
            calls, bids, wins = (counts[(region, capability, w)] for w in ("calls", "bids", "wins"))
            text = (f"demand {capability} in {region}, {hour:%Y-%m-%d} {hour:%H}:00–{hour.hour + 1:02d}:00: {calls} calls seen, "
                    f"we bid on {bids}, won {wins}" + (f" ({wins / calls:.0%} of the calls)" if calls else ""))
            items.append(MemoryItem(text, MemoryKind.DEMAND, "market",
                                    {"capability": capability, "region": region, "hour": hour.hour, "calls": calls,
                                     "bids": bids, "wins": wins}, hour,
                                    key=f"demand for {capability} in {region} at {hour.hour:02d}:00"))
        return items
