"""Run a simulated city: a broker, a ledger, a fleet of machine nodes and a requester per region,
a day of demand, and the report.

Everything crosses the real broker and lands in the real ledger; only time is simulated. On the
virtual clock (the default, ``core.virtual``) market time advances only when the city has nothing
left to do at the current instant, so the day's outcome is the market's, not the CPU's, and a seed
replays it exactly (the report's ``digest``). On the scaled clock (``tamc serve``) the same agents
run ``speed`` times faster than real time, so a cockpit can watch them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.llm import ModelConfig
from agents.machine_agent import MachineAgent
from agents.node import MachineNode
from agents.requester import JobOutcome, Requester, RequesterConfig
from agents.snapshot import save_snapshot
from agents.workflow import JobFlows, in_memory
from core.clock import ScaledClock, Timeline
from core.errors import InputError, MemoryStoreError
from core.mailbox import Mailbox
from core.money import format_units
from core.virtual import VirtualClock
from hub.broker import RunningBroker, start_broker
from hub.transport import Hub
from ledger import Identity, Keystore, Ledger, machine_wallet, settlement
from ledger.collective import Collective
from ledger.governance import Governance
from machines.driver import SimDriver
from machines.faults import FaultyDriver
from machines.profile import MachineProfile
from market.demand import FLAT, HOURLY_SHAPE, DemandModel, JobRequest, generate_jobs
from market.fleet import COLLECTIVE_MEMBERS, FAB_CELL, build_fleet, stakeholders
from market.lifecycle import LifeConfig, Lifecycle, LifeReport
from market.regions import DEFAULT_REGIONS, Region
from market.technician import Technician
from market.welfare import fcfs_dispatch, hindsight_optimum
from memory import MachineMemory, MemoryStore
from memory.signals import job_text

__all__ = ["LiveCity", "MachineReport", "MarketConfig", "MarketReport", "ModelReport", "Snapshot", "run_market"]

log = logging.getLogger("tamc.market")


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
    broker: str | None = None
    """mqtt://host:port of an existing broker; None starts a private one."""
    data_dir: Path = Path(".tamc")
    bid_window_s: float = Field(default=108.0, gt=0)
    """Market seconds machines have to bid (108: 30 real ms at 3600×)."""
    accept_window_s: float = Field(default=180.0, gt=0)
    """Market seconds the winner has to accept before the runner-up is asked."""
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


@dataclass
class LiveCity:
    """The running city, for what watches or serves it while it runs (``tamc serve``). ``nodes``
    grows as machines are born; everything here is shared with the market's threads."""

    config: MarketConfig
    broker_url: str
    ledger: Ledger
    governance: Governance
    keys: Keystore
    clock: Timeline
    day_start: float
    """Epoch seconds on ``clock`` when the day's demand began."""
    nodes: list[MachineNode]
    regions: tuple[Region, ...]
    requester_config: RequesterConfig
    agent: MachineAgent | None
    outcomes: list[JobOutcome]

    def node(self, machine_id: str) -> MachineNode | None:
        return next((n for n in reversed(self.nodes) if n.id == machine_id), None)

    def hours(self) -> float:
        """Market hours since the day began."""
        return (self.clock.time() - self.day_start) / 3600


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
    status: str = "active"
    """active, parked or retired at the end of the run."""
    parent: str | None = None
    """The machine that spawned it during the run."""


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
    clock: ClockKind = "virtual"
    """The clock the day ran on."""
    deterministic: bool = True
    """The same configuration and seed give the same ``digest`` (the virtual clock and the rule
    engine; a model, or the scaled clock, make a run depend on real time)."""
    digest: str = ""
    """A fingerprint of every outcome (``market.city.digest``): compare two runs by this one field."""
    decisions: dict[str, int] = Field(default_factory=dict)
    """Bid decisions by the path that made them (rules, llm, llm-clamped, rules-fallback, rules-fast-path)."""
    model: ModelReport | None = None
    memory: MemoryReport | None = None
    life: LifeReport | None = None
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


def make_clock(config: MarketConfig) -> Timeline:
    """The city's clock: virtual (time waits for the work) or scaled (``speed`` × real time)."""
    if config.clock == "virtual":
        return VirtualClock(speed=config.speed, watchdog_s=config.watchdog_s)
    return ScaledClock(config.speed)


def run_market(config: MarketConfig, *, on_progress: Callable[[Snapshot], None] | None = None,
               regions: tuple[Region, ...] = DEFAULT_REGIONS, fleet: list[MachineProfile] | None = None,
               requests: list[JobRequest] | None = None, savings: dict[str, int] | None = None,
               wear: dict[str, float] | None = None, on_ready: Callable[[LiveCity], None] | None = None,
               stop: threading.Event | None = None, agent: MachineAgent | None = None) -> MarketReport:
    """Run a city for ``config.hours``. ``fleet``, ``requests``, ``savings`` (each machine's cash at
    the start) and ``wear`` replace the seeded ones (a test's scenario). ``on_ready`` gets the running
    city once its day has started; setting ``stop`` ends the day early (no more jobs are posted).
    ``agent`` is the machines' agent on a model already built (an eval's subject), instead of one
    built from ``config.model``."""
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:6]
    fleet = list(fleet) if fleet is not None else build_fleet(config.machines, regions)
    model = DemandModel(load=config.load, hourly=FLAT if config.flat_demand else HOURLY_SHAPE)
    if requests is None:
        requests = generate_jobs(fleet, regions, config.hours, seed=config.seed, model=model, prefix=f"{run_id}-")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):  # each run is a new city; keys carry over
        (config.data_dir / f"ledger.db{suffix}").unlink(missing_ok=True)
    clock = make_clock(config)
    ledger_url = f"sqlite:///{(config.data_dir / 'ledger.db').resolve()}"
    ledger = Ledger(ledger_url, clock=clock, durable=False)  # made anew each run: no sync to disk per commit
    keys = Keystore(config.data_dir / "keys.json")
    governance = Governance(ledger, clock=clock)
    own_agent = agent is None and config.model.uses_model
    if own_agent:
        agent = MachineAgent(config.model)
    rng = random.Random(config.seed)
    savings = savings if savings is not None else {p.id: _savings(p, rng) for p in fleet}
    wear = wear if wear is not None else {p.id: _wear(rng) for p in fleet}
    outcomes: list[JobOutcome] = []
    lock = threading.Lock()
    life: Lifecycle | None = None
    life_report: LifeReport | None = None
    stop = stop or threading.Event()

    def record(o: JobOutcome) -> None:
        with lock:
            outcomes.append(o)

    with _broker(config.broker) as broker, _MemoryOpener.open(config, clock) as memory:
        # Every job runs as a workflow, checkpointed in memory: a city is one process and each run is a
        # new city (its ledger is recreated), so no run resumes another's jobs. A node in its own process
        # (`tamc agent`) checkpoints to SQLite or PostgreSQL and resumes them. On the virtual clock a
        # step runs on its node's own mailbox (it takes no market time); on the scaled one, off it.
        flows = JobFlows(in_memory(), worker=None if clock.virtual else Mailbox("workflows", clock=clock))
        hubs: list[Hub] = []
        nodes: list[MachineNode] = []
        requesters: dict[str, Requester] = {}
        technicians: list[Technician] = []

        def hub(name: str) -> Hub:
            h = Hub(broker.url, name=name, clock=clock)
            hubs.append(h)
            return h

        def machine(profile: MachineProfile, identity: Identity, fails: frozenset[str] = frozenset(), wear_pct: float = 0.0) -> MachineNode:
            # each machine its own connection: the broker announces its death by last will
            # a simulated machine, whose planned failures (``fail_rate``) fire half-way through their jobs
            driver = FaultyDriver(SimDriver(profile, clock, wear_pct=wear_pct), {job: (0.5, "fail") for job in fails})
            node = MachineNode(profile, identity, hub(profile.id), ledger=ledger, driver=driver, agent=agent, governance=governance,
                               memory=memory.machine(profile.id), telemetry_every_s=config.telemetry_every_s,
                               flows=flows, progress_steps=config.progress_steps)
            nodes.append(node)
            return node

        def spawn(profile: MachineProfile) -> MachineNode:
            return machine(profile, keys.get_or_create(profile.id)).start()

        def open_jobs() -> int:
            return sum(r.open_jobs for r in requesters.values())

        def day_hours() -> float:
            return (clock.time() - day_start) / 3600

        def progress(posted: int) -> None:
            _report_progress(on_progress, day_hours(), config, requests, posted, outcomes, requesters, nodes)

        if memory.store is not None and not memory.unavailable:
            memory.store.warm([job_text(r.job) for r in requests])
        day_start = clock.time()
        try:
            holders = _register(ledger, governance, keys, fleet, config, savings, run_id)
            for profile in fleet:
                fails = frozenset(r.job.id for r in requests if _hash_share(r.job.id, profile.id) < config.fail_rate)
                machine(profile, keys.get_or_create(profile.id), fails, wear.get(profile.id, 0.0) if config.life else 0.0)
            for node in nodes:
                node.start()
            rc = RequesterConfig(bid_window_s=config.bid_window_s, accept_window_s=config.accept_window_s)
            for region in regions:
                identity = keys.get_or_create(f"requester-{region.name}")
                budget = sum(r.reserve for r in requests if r.job.region == region.name)
                wallet = settlement.open_requester(ledger, f"{region.name}-{run_id}", identity.did, budget)
                requesters[region.name] = Requester(identity, hub(f"requester-{region.name}").connect(), ledger, wallet,
                                                    config=rc, on_outcome=record).start()
            _settle_in(clock)  # presence and subscriptions reach the broker before the first call
            day_start = clock.time()  # the day starts now
            if config.life:
                life_hub = hub("lifecycle").connect()
                for region in regions:
                    tech_id = f"tech-{region.name}"
                    technicians.append(Technician(tech_id, keys.get_or_create(tech_id), life_hub, ledger, regions=[region.name],
                                                  clock=clock).start())
                collective = Collective(FAB_CELL, keys.get_or_create(FAB_CELL), governance)
                life = Lifecycle(governance=governance, ledger=ledger, keys=keys, hub=life_hub, clock=clock, nodes=nodes,
                                 spawn=spawn, regions=regions, holders=holders, collectives=[collective], config=config.life_config,
                                 requester_config=rc, seed=config.seed, run_id=run_id).start()
            for req in requests:  # the day's demand, each job posted at its hour of market time
                requesters[req.job.region].post(req.job, reserve=req.reserve, value=req.value,
                                                after_s=day_start + req.at_h * 3600 - clock.time())
            if on_ready is not None:
                on_ready(LiveCity(config=config, broker_url=broker.url, ledger=ledger, governance=governance, keys=keys,
                                  clock=clock, day_start=day_start, nodes=nodes, regions=regions, requester_config=rc,
                                  agent=agent, outcomes=outcomes))
            day_end = day_start + config.hours * 3600
            _run(clock, day_end, stop=stop.is_set, progress=lambda: progress(sum(1 for r in requests if r.at_h <= day_hours())))
            if life is not None:
                life.stop()
                life_report = life.report()
            # hours each machine worked while there was demand (the drain after it does not count)
            worked = {n.id: n.mailbox.call(lambda n=n: n.driver.telemetry().operating_hours if n.driver else 0.0) for n in nodes}
            _run(clock, clock.time() + config.drain_h * 3600, stop=lambda: open_jobs() == 0, progress=lambda: progress(len(requests)))
            paid = sum(1 for o in outcomes if o.outcome == "paid")
            # the last 'paid' events reach the machines, which settle their costs
            _run(clock, clock.time() + 10 * clock.speed, stop=lambda: sum(n.stats.paid for n in nodes) >= paid)
            run_hours = day_hours()
        finally:
            if life is not None and life_report is None:
                life.stop()
            for tech in technicians:
                tech.stop()
            for node in nodes:
                try:
                    save_snapshot(config.data_dir, node.snapshot())
                except (OSError, TimeoutError) as exc:
                    log.warning("machine=%s state not saved: %s", node.id, exc)
                node.stop()
            if agent is not None and own_agent:
                agent.close()
            for r in requesters.values():
                r.stop()
            _settle_in(clock)
            dropped: Counter[str] = Counter()
            for h in hubs:
                dropped.update(h.dropped())
                h.close()
            if flows.worker is not None:
                flows.worker.close()
            audit = ledger.audit()
            if audit:
                log.error("ledger audit found problems: %s", audit)
            memory_report = memory.report(nodes)
            balances = ledger.balances()
            ledger.close()
            if isinstance(clock, VirtualClock):
                clock.close()
                log.info("virtual clock %s", dict(clock.stats))
    parents = life_report.parents if life_report else {}
    report = _report(run_id, config, broker.kind, fleet, nodes, requests, outcomes, worked, run_hours,
                     dict(dropped), time.perf_counter() - started, ledger_url, parents)
    report = report.model_copy(update={"memory": memory_report, "life": life_report})
    return report.model_copy(update={"digest": digest(report, balances, run_id)})


def _run(clock: Timeline, until: float, *, stop: Callable[[], bool], progress: Callable[[], None] | None = None) -> None:
    """Let the city's time run to ``until`` or until ``stop()``; report progress on the way (every
    market half hour on the virtual clock, every tenth of a second on a real one)."""
    if isinstance(clock, VirtualClock):
        while clock.time() < until and not stop():
            clock.run(min(until, clock.time() + 1800), stop=stop)
            if progress is not None:
                progress()
        return
    while clock.time() < until and not stop():
        if progress is not None:
            progress()
        time.sleep(max(min((until - clock.time()) / clock.speed, 0.1), 0.0))


def _settle_in(clock: Timeline) -> None:
    """Let what is under way at this instant land (subscriptions, presence) before going on."""
    if isinstance(clock, VirtualClock):
        clock.settle()
    else:
        time.sleep(0.2)


def digest(report: MarketReport, balances: dict[str, int], run_id: str) -> str:
    """A fingerprint of what the day decided: every job's outcome, machine's books, life event and
    ledger balance (run ids aside). Two runs of one seed on the virtual clock give the same one."""
    facts = outcome_facts(report, balances, run_id)
    if path := os.environ.get("TAMC_DIGEST_FACTS"):  # to see what two runs disagree on: diff the two files
        Path(path).write_text(json.dumps(facts, indent=1), "utf-8")
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def outcome_facts(report: MarketReport, balances: dict[str, int], run_id: str) -> dict[str, object]:
    """What ``digest`` fingerprints, with the run's id replaced by ``RUN``."""
    facts = {
        "counts": [report.posted, report.paid, report.expired, report.refunded, report.unfinished, report.takeovers],
        "welfare": [report.welfare, report.optimum_welfare, report.baseline_welfare],
        "machines": [[m.machine_id, m.jobs, m.revenue, m.costs, m.profit, m.status, round(m.wear_pct, 3)] for m in report.machines],
        "outcomes": [[o.job_id, o.outcome, o.machine_id, o.price, o.bids, o.awards, o.takeovers] for o in report.outcomes],
        "life": [[e.at_h, e.machine_id, e.event, e.detail] for e in report.life.events] if report.life else [],
        "ledger": sorted(balances.items()),
    }
    return json.loads(json.dumps(facts, default=str).replace(run_id, "RUN"))  # type: ignore[no-any-return]


def _savings(profile: MachineProfile, rng: random.Random) -> int:
    """Cash a machine of the demo city starts the day with, from before: a few days of fixed costs
    for most, and for some enough to buy a second machine."""
    if rng.random() < 0.15:
        return round(profile.purchase_price * rng.uniform(1.15, 1.4))
    return round(profile.fixed_daily_cost * rng.uniform(0.2, 4.0))


def _wear(rng: random.Random) -> float:
    """Wear a machine of the demo city starts the day with: most well short of service, about one
    in five past the charter's maintenance threshold (it will ask its holders for a budget)."""
    return round(rng.uniform(60, 72) if rng.random() < 0.2 else rng.uniform(0, 50), 2)


def _register(ledger: Ledger, governance: Governance, keys: Keystore, fleet: list[MachineProfile], config: MarketConfig,
              savings: dict[str, int], run_id: str) -> dict[str, Identity]:
    """Register every machine with its holders (keys bound to their accounts, so their votes can
    be checked), its charter and its savings; set up the fab cell's members. Returns the holders' keys."""
    holders: dict[str, Identity] = {}
    for index, profile in enumerate(fleet):
        identity = keys.get_or_create(profile.id)
        owners = stakeholders(index, profile)
        for name in owners:
            if name != FAB_CELL:
                holders[settlement.holder(name)] = keys.get_or_create(f"holder-{name}")
        if FAB_CELL in owners and not ledger.has_shares(FAB_CELL):
            ledger.open_account(FAB_CELL, owner=keys.get_or_create(FAB_CELL).did)
            for member in COLLECTIVE_MEMBERS:
                account = settlement.holder(member)
                holders[account] = keys.get_or_create(f"holder-{member}")
                ledger.open_account(account, owner=holders[account].did)
            ledger.issue_shares(FAB_CELL, {settlement.holder(m): 1 for m in COLLECTIVE_MEMBERS}, key=f"shares:{FAB_CELL}")
            governance.register(FAB_CELL, charter=config.life_config.charter)
        settlement.register_machine(ledger, profile.id, identity.did, owners)
        for name in owners:
            if name != FAB_CELL:
                ledger.bind_owner(settlement.holder(name), holders[settlement.holder(name)].did)
        if config.life:
            governance.register(profile.id, region=profile.region, charter=config.life_config.charter)
            if savings.get(profile.id):
                ledger.mint(machine_wallet(profile.id), savings[profile.id], key=f"savings:{run_id}:{profile.id}",
                            memo="savings the machine starts the day with")
    return holders


class _MemoryOpener:
    """Opens each machine's memory; a store that cannot be used is reported once and the
    machines run without memory."""

    def __init__(self, store: MemoryStore | None, unavailable: str | None = None) -> None:
        self.store = store
        self.unavailable = unavailable

    @classmethod
    @contextlib.contextmanager
    def open(cls, config: MarketConfig, clock: Timeline) -> Iterator[_MemoryOpener]:
        from memory import MemoryConfig, MemoryStore
        from memory.server import chroma_server

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
            # records gather for a second at the market's pace before a write; on the virtual clock reads
            # run on the asking node's own thread (they take no market time, and their order is fixed)
            store_config = MemoryConfig(path=path, url=url, write_delay_s=clock.speed, read_threads=0 if clock.virtual else 2)
            opener = cls(MemoryStore(store_config, clock=clock), unavailable)
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
            return self.store.machine(machine_id, fresh=True)  # each run a new city: a seeded day replays exactly
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


def _report_progress(on_progress: Callable[[Snapshot], None] | None, hours: float, config: MarketConfig,
                     requests: list[JobRequest], posted: int, outcomes: list[JobOutcome],
                     requesters: dict[str, Requester], nodes: list[MachineNode]) -> None:
    if on_progress is None:
        return
    counts = Counter(o.outcome for o in outcomes)
    on_progress(Snapshot(
        sim_hours=round(hours, 4), horizon_h=config.hours, posted=posted, total=len(requests),
        paid=counts["paid"], expired=counts["expired"], refunded=counts["refunded"],
        open=sum(r.open_jobs for r in requesters.values()),
        busy=sum(1 for n in nodes if n.busy), machines=len(nodes),
        revenue=sum(o.price or 0 for o in outcomes if o.outcome == "paid"),
    ))


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _report(run_id: str, config: MarketConfig, broker_kind: str, fleet: list[MachineProfile], nodes: list[MachineNode],
            requests: list[JobRequest], outcomes: list[JobOutcome], worked: dict[str, float],
            run_hours: float, dropped: dict[str, int], wall_s: float, ledger_url: str, parents: dict[str, str]) -> MarketReport:
    machines = []
    for node in nodes:
        s = node.stats
        wear = node.driver.telemetry().wear_pct if node.driver else 0.0
        machines.append(MachineReport(
            machine_id=node.id, kind=node.profile.kind.value, region=node.profile.region, jobs=s.paid,
            busy_hours=round(s.busy_hours, 4), utilization=round(min(worked[node.id] / config.hours, 1.0), 4),
            revenue=s.revenue, costs=s.costs, profit=s.revenue - s.costs, wear_pct=round(wear, 4),
            status=node.standing, parent=parents.get(node.id),
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
        clock=config.clock, deterministic=config.clock == "virtual" and not config.model.uses_model,
    )


def _double_awards(nodes: list[MachineNode]) -> int:
    """Jobs that more than one machine finished and was paid for (the protocol must make this 0)."""
    paid = Counter(job for n in nodes for job, _ in n.stats.settled)
    return sum(1 for c in paid.values() if c > 1)


def describe(report: MarketReport) -> str:
    text = (f"{report.paid}/{report.posted} jobs paid, revenue {format_units(report.revenue)}, "
            f"efficiency {report.efficiency:.1%} of optimum (baseline {report.baseline_efficiency:.1%})")
    if report.life is not None:
        life = report.life
        text += (f"; life: {life.births} births, {life.moves} moves, {life.parkings} parkings, {life.deaths} deaths, "
                 f"{life.maintenances} maintenances")
    if report.memory is not None and report.memory.store != "off":
        text += (f"; memory unavailable ({report.memory.unavailable})" if report.memory.unavailable
                 else f"; {report.memory.priced} bids priced from memory")
    m = report.model
    if m is None:
        return text + "; bids by the rule engine (no model configured)"
    p50 = f"{m.latency_ms_p50:.0f} ms" if m.latency_ms_p50 is not None else "n/a"
    return text + (f"; model {m.model}: asked {m.asked} times, {m.calls} calls, {m.input_tokens}+{m.output_tokens} tokens, "
                   f"p50 {p50}, {report.decisions.get('rules-fallback', 0)} fallbacks")
