"""Run a simulated city: a broker, a ledger, a fleet of machine nodes and a requester per region,
a day of demand fed on a clock that runs ``speed`` times faster than real time, and the report.

Everything crosses the real broker and lands in the real ledger; only time is scaled.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents import settlement
from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.memory import MachineMemory, MemoryStore
from agents.node import MachineNode
from agents.requester import JobOutcome, Requester, RequesterConfig
from agents.snapshot import save_snapshot
from core.clock import ScaledClock
from core.errors import InputError, MemoryStoreError
from core.money import format_units
from hub.broker import RunningBroker, start_broker
from hub.transport import Hub
from ledger import Keystore, Ledger
from ledger.governance import Governance
from machines.profile import MachineProfile
from market.demand import FLAT, HOURLY_SHAPE, DemandModel, JobRequest, generate_jobs
from market.fleet import build_fleet, stakeholders
from market.regions import DEFAULT_REGIONS, Region
from market.welfare import fcfs_dispatch, hindsight_optimum

__all__ = ["MachineReport", "MarketConfig", "MarketReport", "ModelReport", "Snapshot", "run_market"]

log = logging.getLogger("tamc.market")


MemoryMode = Literal["server", "embedded", "off"]


class MarketConfig(BaseModel):
    seed: int = 7
    hours: float = Field(default=24.0, gt=0)
    machines: int = Field(default=12, ge=1)
    speed: float = Field(default=3600.0, gt=0)
    """Simulated seconds per real second: 3600 runs an hour in a second."""
    load: float = Field(default=0.85, gt=0)
    flat_demand: bool = False
    """Keep demand at ``load`` all day instead of following the day's shape (nights, peaks)."""
    broker: str | None = None
    """mqtt://host:port of an existing broker; None starts a private one."""
    data_dir: Path = Path(".tamc")
    bid_window_s: float = 0.03
    accept_window_s: float = 0.05
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of jobs a machine fails half-way (to exercise takeovers)."""
    drain_s: float = 60.0
    """Real seconds to wait after the last arrival for open jobs to close."""
    model: ModelConfig = ModelConfig()
    """The machines' LLM agent; ``rules`` (the default) runs on the rule engine alone."""
    memory: MemoryMode = "server"
    """Each machine keeps a vector memory in ``{data_dir}/memory`` (kept across runs) and prices from
    it: ``server`` runs a Chroma server on that folder for the run (the embedded client's writes
    hold the GIL and stall the other machines of this process), ``embedded`` opens it in process,
    ``off`` keeps no memory."""
    memory_url: str | None = None
    """A running Chroma server (``http://host:8000``) to use instead."""


class MachineReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    machine_id: str
    kind: str
    region: str
    jobs: int
    busy_hours: float
    """Hours of the jobs it finished (some may end after the demand stops)."""
    utilization: float
    """Share of the hours of demand the machine spent working (driving included)."""
    revenue: int
    costs: int
    profit: int
    wear_pct: float


class ModelReport(BaseModel):
    """What the machines' model did on the bidding path, over the whole run."""

    model_config = ConfigDict(frozen=True)

    model: str
    asked: int
    """Decisions the model was asked for (routine jobs and refusals skip it)."""
    calls: int
    """Requests sent to the model (a decision with tool calls takes several)."""
    input_tokens: int
    output_tokens: int
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    errors: dict[str, int]
    """Why answers were not used: timeout, invalid output, model error, transport error."""


class MemoryReport(BaseModel):
    """What the machines' memory held and did over the run."""

    model_config = ConfigDict(frozen=True)

    store: str
    """Where it lives, or ``off``."""
    records: int
    """Records held at the end, over all machines (earlier runs included)."""
    added: int
    priced: int
    """Bids the rule engine priced from memory of similar jobs."""
    errors: int
    unavailable: str | None = None
    """Why the store could not be used (the machines bid without memory)."""


class MarketReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    seed: int
    hours: float
    broker: str
    machines: list[MachineReport]
    posted: int
    paid: int
    expired: int
    refunded: int
    unfinished: int
    """Jobs still open when the drain time ran out (0 unless the run was cut short)."""
    takeovers: int
    double_awards: int
    """Jobs that had two machines accepted and working at once (must be 0)."""
    fleet_utilization: float
    revenue: int
    costs: int
    profit: int
    welfare: int
    optimum_welfare: int
    efficiency: float
    baseline_welfare: int
    baseline_efficiency: float
    baseline_filled: int
    baseline_utilization: float
    accept_latency_ms_p50: float | None
    accept_latency_ms_p99: float | None
    dropped: dict[str, int]
    wall_s: float
    machine_days_per_s: float
    ledger_url: str
    decisions: dict[str, int] = Field(default_factory=dict)
    """Bid decisions by the path that made them (rules, llm, llm-clamped, rules-fallback, rules-fast-path)."""
    model: ModelReport | None = None
    memory: MemoryReport | None = None
    outcomes: list[JobOutcome] = Field(default_factory=list, repr=False)


class Snapshot(BaseModel):
    """What the live view shows while the city runs."""

    sim_hours: float
    horizon_h: float
    posted: int
    total: int
    paid: int
    expired: int
    refunded: int
    open: int
    busy: int
    machines: int
    revenue: int


@contextlib.contextmanager
def _broker(url: str | None) -> Iterator[RunningBroker]:
    """The broker at ``url``, or a private one: ``TAMC_BROKER=embedded`` skips mosquitto."""
    if url:
        yield RunningBroker("external", url)
        return
    prefer = os.environ.get("TAMC_BROKER", "auto")
    if prefer not in ("auto", "mosquitto", "embedded"):
        raise InputError(f"TAMC_BROKER={prefer!r}: use auto, mosquitto or embedded")
    with start_broker(prefer) as b:  # type: ignore[arg-type]
        yield b


def run_market(config: MarketConfig, *, on_progress: Callable[[Snapshot], None] | None = None,
               regions: tuple[Region, ...] = DEFAULT_REGIONS) -> MarketReport:
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:6]
    fleet = build_fleet(config.machines, regions)
    model = DemandModel(load=config.load, hourly=FLAT if config.flat_demand else HOURLY_SHAPE)
    requests = generate_jobs(fleet, regions, config.hours, seed=config.seed, model=model, prefix=f"{run_id}-")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    ledger_url = f"sqlite:///{(config.data_dir / 'ledger.db').resolve()}"
    ledger = Ledger(ledger_url)
    keys = Keystore(config.data_dir / "keys.json")
    governance = Governance(ledger)
    agent = MachineAgent(config.model) if config.model.uses_model else None
    outcomes: list[JobOutcome] = []
    lock = threading.Lock()

    def record(o: JobOutcome) -> None:
        with lock:
            outcomes.append(o)

    with _broker(config.broker) as broker, _MemoryOpener.open(config) as memory:
        hubs: list[Hub] = []
        nodes: list[MachineNode] = []
        requesters: dict[str, Requester] = {}
        try:
            for index, profile in enumerate(fleet):
                identity = keys.get_or_create(profile.id)
                settlement.register_machine(ledger, profile.id, identity.did, stakeholders(index))
                fails = frozenset(r.job.id for r in requests if _hash_share(r.job.id, profile.id) < config.fail_rate)
                # each machine its own connection, so the broker can announce its death by last will
                hub = Hub(broker.url, name=profile.id)
                hubs.append(hub)
                nodes.append(MachineNode(profile, identity, hub, ledger=ledger, fail_jobs=fails, agent=agent,
                                         governance=governance, memory=memory.machine(profile.id)))
            for node in nodes:
                node.start()
            rc = RequesterConfig(bid_window_s=config.bid_window_s, accept_window_s=config.accept_window_s, speed=config.speed)
            for region in regions:
                identity = keys.get_or_create(f"requester-{region.name}")
                budget = sum(r.reserve for r in requests if r.job.region == region.name)
                wallet = settlement.open_requester(ledger, f"{region.name}-{run_id}", identity.did, budget)
                hub = Hub(broker.url, name=f"requester-{region.name}").connect()
                hubs.append(hub)
                requesters[region.name] = Requester(identity, hub, ledger, wallet, config=rc, on_outcome=record).start()
            time.sleep(0.2)  # let presence and subscriptions settle before the first call
            clock = ScaledClock(config.speed)  # the day starts now
            for node in nodes:
                node.use_clock(clock)
            _feed(requests, requesters, clock, config, nodes, outcomes, on_progress)
            # hours each machine worked while there was demand (the drain after it does not count)
            worked = {n.id: n.mailbox.call(lambda n=n: n.driver.telemetry().operating_hours if n.driver else 0.0) for n in nodes}
            deadline = time.monotonic() + config.drain_s
            while any(r.open_jobs for r in requesters.values()) and time.monotonic() < deadline:
                _report_progress(on_progress, clock, config, requests, len(requests), outcomes, requesters, nodes)
                time.sleep(0.1)
            time.sleep(0.2)  # the last 'paid' events reach the machines, which settle their costs
            _wait_settled(nodes, outcomes, timeout_s=10)
            run_hours = clock.hours()
        finally:
            for node in nodes:
                try:
                    save_snapshot(config.data_dir, node.snapshot())
                except (OSError, TimeoutError) as exc:
                    log.warning("machine=%s state not saved: %s", node.id, exc)
                node.stop()
            if agent is not None:
                agent.close()
            for r in requesters.values():
                r.stop()
            time.sleep(0.05)
            dropped: Counter[str] = Counter()
            for hub in hubs:
                dropped.update(hub.dropped())
                hub.close()
            ledger.close()
            memory_report = memory.report(nodes)
    report = _report(run_id, config, broker.kind, fleet, nodes, requests, outcomes, worked, run_hours,
                     dict(dropped), time.perf_counter() - started, ledger_url)
    return report.model_copy(update={"memory": memory_report})


class _MemoryOpener:
    """Opens each machine's memory; a store that cannot be used is reported once and the
    machines run without memory."""

    def __init__(self, store: MemoryStore | None, unavailable: str | None = None) -> None:
        self.store = store
        self.unavailable = unavailable

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: MarketConfig) -> Iterator[_MemoryOpener]:
        from agents.memory import MemoryConfig, MemoryStore
        from agents.memory.server import chroma_server

        if config.memory == "off":
            yield cls(None)
            return
        path = config.data_dir / "memory"
        url, unavailable = config.memory_url, None
        with contextlib.ExitStack() as stack:
            if url is None and config.memory == "server":
                try:
                    url = stack.enter_context(chroma_server(path))
                except MemoryStoreError as exc:
                    log.error("%s", exc)
                    unavailable = str(exc)
            opener = cls(MemoryStore(MemoryConfig(path=path, url=url)), unavailable)
            try:
                yield opener
            finally:
                opener.close()  # queued records are written before the server stops

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def machine(self, machine_id: str) -> MachineMemory | None:
        if self.store is None or self.unavailable:
            return None
        try:
            return self.store.machine(machine_id)
        except MemoryStoreError as exc:
            self.unavailable = str(exc)
            log.error("memory unavailable, machines bid without it: %s", exc)
            return None

    def report(self, nodes: list[MachineNode]) -> MemoryReport:
        if self.store is None:
            return MemoryReport(store="off", records=0, added=0, priced=0, errors=0)
        self.store.flush()  # what the machines queued is stored before the count
        memories = [n.memory for n in nodes if n.memory is not None]
        return MemoryReport(store=self.store.where, records=sum(m.count() for m in memories),
                            added=sum(n.stats.memory_records for n in nodes), priced=sum(n.stats.memory_priced for n in nodes),
                            errors=sum(n.stats.memory_errors for n in nodes) + sum(m.write_errors for m in memories),
                            unavailable=self.unavailable)


def _hash_share(job_id: str, machine_id: str) -> float:
    """A fixed pseudo-random share in [0, 1) for a job on a machine: which jobs fail is seeded."""
    digest = hashlib.sha256(f"{job_id}/{machine_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _feed(requests: list[JobRequest], requesters: dict[str, Requester], clock: ScaledClock, config: MarketConfig,
          nodes: list[MachineNode], outcomes: list[JobOutcome], on_progress: Callable[[Snapshot], None] | None) -> None:
    next_view = 0.0
    for i, req in enumerate(requests):
        while (wait := clock.real_seconds(req.at_h - clock.hours())) > 0:
            if time.monotonic() >= next_view:
                _report_progress(on_progress, clock, config, requests, i, outcomes, requesters, nodes)
                next_view = time.monotonic() + 0.1
            time.sleep(min(wait, 0.05))
        requesters[req.job.region].post(req.job, reserve=req.reserve, value=req.value)
    while clock.hours() < config.hours:
        _report_progress(on_progress, clock, config, requests, len(requests), outcomes, requesters, nodes)
        time.sleep(min(clock.real_seconds(config.hours - clock.hours()), 0.1))


def _report_progress(on_progress: Callable[[Snapshot], None] | None, clock: ScaledClock, config: MarketConfig,
                     requests: list[JobRequest], posted: int, outcomes: list[JobOutcome],
                     requesters: dict[str, Requester], nodes: list[MachineNode]) -> None:
    if on_progress is None:
        return
    counts = Counter(o.outcome for o in outcomes)
    on_progress(Snapshot(
        sim_hours=clock.hours(), horizon_h=config.hours, posted=posted, total=len(requests),
        paid=counts["paid"], expired=counts["expired"], refunded=counts["refunded"],
        open=sum(r.open_jobs for r in requesters.values()),
        busy=sum(1 for n in nodes if n.busy), machines=len(nodes),
        revenue=sum(o.price or 0 for o in outcomes if o.outcome == "paid"),
    ))


def _wait_settled(nodes: list[MachineNode], outcomes: list[JobOutcome], timeout_s: float) -> None:
    paid = sum(1 for o in outcomes if o.outcome == "paid")
    deadline = time.monotonic() + timeout_s
    while sum(n.stats.paid for n in nodes) < paid and time.monotonic() < deadline:
        time.sleep(0.05)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _report(run_id: str, config: MarketConfig, broker_kind: str, fleet: list[MachineProfile], nodes: list[MachineNode],
            requests: list[JobRequest], outcomes: list[JobOutcome], worked: dict[str, float],
            run_hours: float, dropped: dict[str, int], wall_s: float, ledger_url: str) -> MarketReport:
    machines = []
    for node in nodes:
        s = node.stats
        wear = node.driver.telemetry().wear_pct if node.driver else 0.0
        machines.append(MachineReport(
            machine_id=node.id, kind=node.profile.kind.value, region=node.profile.region, jobs=s.paid,
            busy_hours=round(s.busy_hours, 4), utilization=round(min(worked[node.id] / config.hours, 1.0), 4),
            revenue=s.revenue, costs=s.costs, profit=s.revenue - s.costs, wear_pct=round(wear, 4),
        ))
    counts = Counter(o.outcome for o in outcomes)
    costs_by_job = {job: c.paid_out for n in nodes for job, c in n.stats.settled}
    welfare = sum(o.value - costs_by_job.get(o.job_id, 0) for o in outcomes if o.outcome == "paid")
    optimum = hindsight_optimum(requests, fleet, run_hours)
    baseline = fcfs_dispatch(requests, fleet, horizon_h=config.hours)
    latencies = [o.accept_latency_ms for o in outcomes if o.accept_latency_ms is not None]
    busy = sum(min(worked[n.id], config.hours) for n in nodes)
    paths: Counter[str] = Counter()
    for n in nodes:
        paths.update(n.stats.paths)
    model = None
    if config.model.uses_model:
        model_ms = [ms for n in nodes for ms in n.stats.model_latency_ms]
        errors: Counter[str] = Counter()
        for n in nodes:
            errors.update(n.stats.model_errors)
        model = ModelReport(
            model=config.model.label(), asked=sum(n.stats.model_decisions for n in nodes), calls=sum(n.stats.model_calls for n in nodes),
            input_tokens=sum(n.stats.input_tokens for n in nodes), output_tokens=sum(n.stats.output_tokens for n in nodes),
            latency_ms_p50=_percentile(model_ms, 0.5), latency_ms_p99=_percentile(model_ms, 0.99), errors=dict(errors),
        )
    return MarketReport(
        run_id=run_id, seed=config.seed, hours=config.hours, broker=broker_kind, machines=machines,
        posted=len(requests), paid=counts["paid"], expired=counts["expired"], refunded=counts["refunded"],
        unfinished=len(requests) - len(outcomes),
        takeovers=sum(o.takeovers for o in outcomes), double_awards=_double_awards(nodes),
        fleet_utilization=round(busy / (config.hours * len(nodes)), 4),
        revenue=sum(m.revenue for m in machines), costs=sum(m.costs for m in machines),
        profit=sum(m.profit for m in machines), welfare=welfare, optimum_welfare=optimum.welfare,
        efficiency=round(welfare / optimum.welfare, 4) if optimum.welfare else 1.0,
        baseline_welfare=baseline.welfare,
        baseline_efficiency=round(baseline.welfare / optimum.welfare, 4) if optimum.welfare else 1.0,
        baseline_filled=baseline.filled,
        baseline_utilization=round(baseline.busy_hours / (config.hours * len(nodes)), 4),
        accept_latency_ms_p50=_percentile(latencies, 0.5), accept_latency_ms_p99=_percentile(latencies, 0.99),
        dropped=dropped, wall_s=round(wall_s, 2),
        machine_days_per_s=round(len(nodes) * run_hours / 24 / wall_s, 4),
        ledger_url=ledger_url, decisions=dict(paths), model=model, outcomes=sorted(outcomes, key=lambda o: o.job_id),
    )


def _double_awards(nodes: list[MachineNode]) -> int:
    """Jobs that more than one machine finished and was paid for (the protocol must make this 0)."""
    paid = Counter(job for n in nodes for job, _ in n.stats.settled)
    return sum(1 for c in paid.values() if c > 1)


def describe(report: MarketReport) -> str:
    text = (f"{report.paid}/{report.posted} jobs paid, revenue {format_units(report.revenue)}, "
            f"efficiency {report.efficiency:.1%} of optimum (baseline {report.baseline_efficiency:.1%})")
    if report.memory is not None and report.memory.store != "off":
        text += (f"; memory unavailable ({report.memory.unavailable})" if report.memory.unavailable
                 else f"; {report.memory.priced} bids priced from memory")
    m = report.model
    if m is None:
        return text + "; bids by the rule engine (no model configured)"
    p50 = f"{m.latency_ms_p50:.0f} ms" if m.latency_ms_p50 is not None else "n/a"
    return text + (f"; model {m.model}: asked {m.asked} times, {m.calls} calls, {m.input_tokens}+{m.output_tokens} tokens, "
                   f"p50 {p50}, {report.decisions.get('rules-fallback', 0)} fallbacks")
