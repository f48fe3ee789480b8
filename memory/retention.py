"""Keeping memory bounded: old records folded into daily summaries, then the oldest dropped.

Job outcomes, wear, demand and maintenance records older than ``keep_days`` (market time), or the
oldest half of them when the machine is over ``max_records``, become one summary per kind, day,
capability and region that keeps the counts and medians the machine reasons with. Facts told by
stakeholders are kept as long as possible: only when facts and summaries alone fill the limit are
the oldest of them dropped, and the log says so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from statistics import median
from typing import Any, Protocol

from pydantic import BaseModel

from core.money import format_units
from memory.records import MemoryConfig, MemoryItem, MemoryKind, MemoryRecord

__all__ = ["Compaction", "compact", "summarize"]

log = logging.getLogger("tamc.memory")

FOLDED = (MemoryKind.JOB_OUTCOME, MemoryKind.WEAR, MemoryKind.DEMAND, MemoryKind.MAINTENANCE)
HEADROOM = 0.9
"""Compaction brings a machine down to this share of its limit, so it does not run on every add."""


class Compacted(Protocol):
    """What compaction needs of a machine's memory (``memory.store.MachineMemory`` is one)."""

    machine_id: str
    config: MemoryConfig
    clock: Callable[[], datetime]

    def all(self) -> list[MemoryRecord]: ...
    def count(self) -> int: ...
    def remember_many(self, items: list[MemoryItem]) -> Any: ...
    def forget(self, ids: list[str]) -> Any: ...


class Compaction(BaseModel):
    folded: int = 0
    summaries: int = 0
    dropped: int = 0
    records: int = 0
    """Records left."""


def compact(memory: Compacted, now: datetime | None = None) -> Compaction:
    now = now or memory.clock()
    records = memory.all()
    target = int(memory.config.max_records * HEADROOM)
    foldable = sorted((r for r in records if r.kind in FOLDED), key=lambda r: r.at)
    cutoff = now - timedelta(days=memory.config.keep_days)
    old = [r for r in foldable if r.at < cutoff]
    if len(records) > target:
        old = foldable[: max(len(old), len(foldable) // 2)]
    report = Compaction(records=len(records))
    if old:
        groups: dict[tuple[str, str, str, str], list[MemoryRecord]] = defaultdict(list)
        for r in old:
            key = (r.kind, str(r.metadata.get("capability", "*")), str(r.metadata.get("region", "*")), r.at.date().isoformat())
            groups[key].append(r)
        summaries = [summarize(kind, cap, region, day, recs) for (kind, cap, region, day), recs in sorted(groups.items())]
        for start in range(0, len(summaries), 1000):
            memory.remember_many([MemoryItem(text, MemoryKind.SUMMARY, "retention", meta, at)
                                  for text, meta, at in summaries[start : start + 1000]])
        memory.forget([r.id for r in old])
        report.folded, report.summaries = len(old), len(summaries)
    left = memory.count()
    if left > target:  # facts and summaries alone fill the limit: drop the oldest
        rest = sorted(memory.all(), key=lambda r: (r.kind == MemoryKind.FACT, r.at))
        drop = rest[: left - target]
        memory.forget([r.id for r in drop])
        report.dropped = len(drop)
        log.warning("machine=%s memory over its limit of %d records: dropped the %d oldest summaries and facts",
                    memory.machine_id, memory.config.max_records, len(drop))
    report.records = memory.count()
    log.info("machine=%s memory compacted: folded=%d summaries=%d dropped=%d records=%d", memory.machine_id,
             report.folded, report.summaries, report.dropped, report.records)
    return report


def summarize(kind: str, capability: str, region: str, day: str, records: list[MemoryRecord]) -> tuple[str, dict[str, Any], datetime]:
    """One record standing for ``records`` (one kind, day, capability, region): text, metadata, time."""
    n = len(records)
    where = " ".join(x for x in (capability if capability != "*" else "", f"in {region}" if region != "*" else "") if x)
    meta: dict[str, Any] = {"of_kind": kind, "n": n, "day": day, "from_at": records[0].at.timestamp()}
    if capability != "*":
        meta["capability"] = capability
    if region != "*":
        meta["region"] = region
    m = [r.metadata for r in records]
    if kind == MemoryKind.JOB_OUTCOME:
        wins = sum(x.get("outcome") == "won" for x in m)
        losses = sum(x.get("outcome") == "lost" for x in m)
        ours = [x["price"] / x["cost"] for x in m if x.get("cost") and x.get("price")]
        theirs = [x["winning_price"] / x["cost"] for x in m if x.get("cost") and x.get("winning_price")]
        profit = sum(int(x.get("profit", 0)) for x in m if x.get("outcome") == "won")
        meta.update(wins=wins, losses=losses, profit=profit)
        text = f"summary of {n} job outcomes {where} on {day}: won {wins}, lost {losses}"
        if ours:
            meta["our_ratio"] = round(median(ours), 4)
            text += f"; we bid {median(ours):.2f}× cost (median)"
        if theirs:
            meta["winning_ratio"] = round(median(theirs), 4)
            text += f", winners {median(theirs):.2f}× cost"
        text += f"; profit on jobs won {format_units(profit)} units"
    elif kind == MemoryKind.WEAR:
        wear = [float(x.get("wear_pct", 0.0)) for x in m]
        meta.update(wear_first=wear[0], wear_last=wear[-1], wear_max=max(wear))
        text = f"summary of {n} wear observations on {day}: wear went from {wear[0]:.2f}% to {wear[-1]:.2f}% (max {max(wear):.2f}%)"
    elif kind == MemoryKind.DEMAND:
        calls, bids, wins = (sum(int(x.get(f, 0)) for x in m) for f in ("calls", "bids", "wins"))
        meta.update(calls=calls, bids=bids, wins=wins)
        text = f"summary of demand {where} on {day}: {calls} calls seen over {n} hours, we bid on {bids} and won {wins}"
    else:
        text = f"summary of {n} {kind} records on {day}: " + " | ".join(r.text[:120] for r in records[-5:])
    return text[:1900], meta, records[-1].at
