"""What a machine's memory holds: the kinds of record, an item to remember, a record recalled, and
where the store lives. Apart from the store so retention and signals read them without it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MemoryConfig", "MemoryItem", "MemoryKind", "MemoryRecord"]


class MemoryKind(StrEnum):
    JOB_OUTCOME = "job_outcome"
    """A job we bid on: spec, our price and cost, the winner and winning price, profit."""
    WEAR = "wear"
    """Wear observed after a job."""
    DEMAND = "demand"
    """Calls seen, bids and wins in one market hour, for a capability and region."""
    MAINTENANCE = "maintenance"
    """Maintenance asked for or done."""
    FACT = "fact"
    """Something a stakeholder (or the agent) told the machine, attributed to them."""
    OPERATOR = "operator"
    """A handoff to a person, and each command an operator sent while in control."""
    SUMMARY = "summary"
    """Old records of one kind, day, capability and region folded into one (retention)."""


class MemoryItem(NamedTuple):
    text: str
    kind: str
    source: str
    metadata: dict[str, Any]
    at: datetime | None = None
    key: str | None = None
    """What to embed instead of ``text`` — a job outcome is found by the job it was about, whose
    vector is already cached from when its call was priced."""


class MemoryConfig(BaseModel):
    """Where memories live and how many are kept."""

    model_config = ConfigDict(frozen=True)

    path: Path | None = None
    """Folder of the embedded store (``{data dir}/memory`` by default)."""
    url: str | None = None
    """A Chroma server (``http://host:8000``); when set, ``path`` is not used."""
    max_records: int = Field(default=20_000, ge=100)
    """Per machine; past it, the oldest records are folded into summaries."""
    keep_days: float = Field(default=30.0, gt=0)
    """Job outcomes, wear and demand older than this (market time) are folded into daily summaries."""
    write_delay_s: float = Field(default=1.0, ge=0)
    """Seconds (of the store's clock) the background writer gathers records before one write (each
    write is a commit)."""
    read_threads: int = Field(default=2, ge=0)
    """Threads that run reads off the bidding path; 0 runs each read on the caller's thread (a city on
    virtual time, where a read takes no market time and its order is fixed)."""


class MemoryRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    kind: str
    source: str
    """Who it came from: ``market``, ``telemetry``, ``agent`` or a stakeholder's name."""
    at: datetime
    score: float = 0.0
    """Similarity to the query, 1 is identical (0 when listed rather than searched)."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def ref(self) -> str:
        """The short id an answer cites, e.g. ``mem:4f1a2b3c9d``."""
        return "mem:" + self.id.rsplit(":", 1)[-1]
