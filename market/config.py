"""What a simulated city is asked to be: its seed, size, hours, clock, windows, memory and life cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from agents.llm import ModelConfig
from market.lifecycle import LifeConfig

__all__ = ["ClockKind", "MarketConfig", "MemoryMode"]


MemoryMode = Literal["server", "embedded", "off"]
ClockKind = Literal["virtual", "scaled"]


class MarketConfig(BaseModel):
    seed: int = 7
    hours: float = Field(default=24.0, gt=0)
    machines: int = Field(default=12, ge=1)
    clock: ClockKind = "virtual"
    """``virtual``: market time waits for the work (deterministic, as fast as the work allows);
    ``scaled``: market time runs ``speed`` times faster than real time (a live view)."""
    speed: float = Field(default=3600.0, gt=0)
    """Market seconds per real second. On the scaled clock, its pace (3600 runs an hour in a second);
    on the virtual clock, what a second of real work that takes real time (a model's answer) costs
    in market time, and the pace the real-time waits of the agents are counted at."""
    load: float = Field(default=0.85, gt=0)
    flat_demand: bool = False
    """Keep demand at ``load`` all day instead of following the day's shape (nights, peaks)."""
    haggle: float = Field(default=0.0, ge=0, le=1)
    """The share of requesters that haggle: they counter the best bids before they award."""
    broker: str | None = None
    """mqtt://host:port of an existing broker; None starts a private one."""
    broker_home: Path | None = None
    """The folder of the broker at ``broker`` when TAMC runs it (``tamc broker serve --home``): each
    participant gets its own user and role there. Without it, every connection uses ``broker`` as given."""
    data_dir: Path = Path(".tamc")
    bid_window_s: float = Field(default=108.0, gt=0)
    """Market seconds machines have to bid (108: 30 real ms at 3600×)."""
    accept_window_s: float = Field(default=180.0, gt=0)
    """Market seconds the winner has to accept before the runner-up is asked."""
    moves: bool = True
    """Awards are provisional until a job starts: a machine with room offers to take over work
    another holds, and the requester moves it if it will be done sooner (False: award at arrival)."""
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of jobs a machine fails half-way (to exercise takeovers)."""
    drain_h: float = Field(default=48.0, ge=0)
    """Market hours after the day that open jobs get to close (each closes by its deadline and grace)."""
    watchdog_s: float = Field(default=60.0, gt=0)
    """Virtual clock: real seconds with work pending and nothing moving before the run fails as stalled."""
    model: ModelConfig = ModelConfig()
    """The machines' LLM agent; ``rules`` (the default) runs on the rule engine alone."""
    memory: MemoryMode = "server"
    """Each machine keeps a vector memory in ``{data_dir}/memory`` (new each run, like the ledger:
    a seeded day replays exactly; it stays after the run for ``tamc chat``) and prices from it:
    ``server`` runs a Chroma server on that folder for the run (the embedded client's writes
    hold the GIL and stall the other machines of this process), ``embedded`` opens it in process,
    ``off`` keeps no memory."""
    memory_url: str | None = None
    """A running Chroma server (``http://host:8000``) to use instead."""
    life: bool = True
    """Run the life cycle: fixed costs, the machines' proposals, holders' votes, births, moves,
    parkings, maintenance and deaths (``market.lifecycle``)."""
    life_config: LifeConfig = LifeConfig()
    progress_steps: int = Field(default=2, ge=1)
    """Progress readings of each job (the last one is its end): each is a reading of the machine and a
    message; a live view (``tamc serve``) wants 4, a day nobody watches does with 2."""
    telemetry_every_s: float | None = None
    """Machines publish telemetry this often (real seconds at the market's pace) besides at each
    change, for a live view."""
