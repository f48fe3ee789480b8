"""What the node writes to its machine's memory: job outcomes, wear, demand seen, operators' commands.

Writes go out in the background at market time (a failure is counted and logged, at most once a
minute, and the machine goes on without memory); demand is counted per region, capability and hour
and flushed as one record per bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from agents.node.stats import NodeStats
from core.clock import Timeline
from core.errors import MemoryStoreError
from machines.job import JobSpec
from memory import MachineMemory, MemoryItem
from memory.signals import DemandLog

__all__ = ["MEMORY_WARN_EVERY_S", "Diary"]

log = logging.getLogger("tamc.node")

MEMORY_WARN_EVERY_S = 60.0
"""Real seconds at the market's pace between two warnings of a failing memory."""


class Diary:
    def __init__(self, machine_id: str, memory: MachineMemory | None, clock: Timeline, stats: NodeStats) -> None:
        self.machine_id = machine_id
        self.memory = memory
        self.clock = clock
        self.stats = stats
        self._demand = DemandLog()
        self._warned = 0.0

    def count_demand(self, job: JobSpec, what: str) -> None:
        if self.memory is not None:
            self.store(self._demand.count(self.clock.now(), job.region, job.capability, what))

    def flush_demand(self) -> None:
        self.store(self._demand.flush())

    def store(self, items: Sequence[MemoryItem | None]) -> None:
        """Remember ``items`` at market time, written in the background."""
        now = self.clock.now()
        kept = [i if i.at is not None else i._replace(at=now) for i in items if i is not None]
        if kept and self.memory is not None:
            self.memory.remember_later(kept)
            self.stats.memory_records += len(kept)

    def failed(self, doing: str, exc: MemoryStoreError) -> None:
        """Count a failed memory operation; log it at most once a minute. The machine goes on without it."""
        self.stats.memory_errors += 1
        now = self.clock.time()
        if now - self._warned > MEMORY_WARN_EVERY_S * self.clock.speed:
            self._warned = now
            log.warning("machine=%s memory=%s failed=%s error=%s", self.machine_id, doing, self.stats.memory_errors, exc)
