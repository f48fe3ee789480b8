"""A simulated city you can hold: a broker, a ledger, a fleet of machine nodes and a requester per
region, a day of demand, and its report.

    with City(MarketConfig(seed=7)) as city:   # starts everything, posts the day
        city.run()                             # the day, the drain, the last payments
    report = city.report()                     # after teardown: the books are final

Everything crosses the real broker and lands in the real ledger; only time is simulated. On the
virtual clock (the default, ``core.virtual``) market time advances only when the city has nothing
left to do at the current instant, so the day's outcome is the market's, not the CPU's, and a seed
replays it exactly (the report's ``digest``). On the scaled clock (``tamc serve``) the same agents
run ``speed`` times faster than real time, so a cockpit can watch them while the day runs on a
thread of its own. Teardown is on an exit stack, in order, and bounded: a stopped city skips its
drain, and each step that waits says what it waits for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from agents.machine_agent import MachineAgent
from agents.node import MachineNode
from agents.requester import JobOutcome, Requester, RequesterConfig
from agents.snapshot import save_snapshot
from agents.workflow import JobFlows, in_memory
from core.clock import ScaledClock, Timeline
from core.datadir import DataDir
from core.errors import InputError
from core.mailbox import Mailbox
from core.virtual import VirtualClock
from hub.access import Role
from hub.broker import RunningBroker, external, start_broker
from hub.jobids import owned, owned_local
from hub.transport import Hub
from ledger import Identity, Keystore, Ledger, settlement
from ledger.collective import Collective
from ledger.governance import Governance
from machines.driver import SimDriver
from machines.faults import FaultyDriver
from machines.profile import MachineProfile
from machines.regions import DEFAULT_REGIONS, Region
from market.config import MarketConfig
from market.demand import FLAT, HOURLY_SHAPE, DemandModel, JobRequest, generate_jobs
from market.fleet import FAB_CELL, build_fleet
from market.founding import MemoryOpener, fail_share, register_fleet, savings_of, wear_of
from market.lifecycle import Lifecycle, LifeReport
from market.report import MarketReport, MemoryReport, Snapshot, build_report, digest, report_progress
from market.technician import Technician
from memory.signals import job_text

__all__ = ["City", "make_clock", "simulate"]

log = logging.getLogger("tamc.market")


def make_clock(config: MarketConfig) -> Timeline:
    """The city's clock: virtual (time waits for the work) or scaled (``speed`` × real time)."""
    if config.clock == "virtual":
        return VirtualClock(speed=config.speed, watchdog_s=config.watchdog_s)
    return ScaledClock(config.speed)


@contextlib.contextmanager
def _broker(url: str | None, home: Path | None) -> Iterator[RunningBroker]:
    """The broker at ``url`` (its users in ``home``, if TAMC runs it), or a private one:
    ``TAMC_BROKER=embedded`` skips mosquitto."""
    if url:
        yield external(url, home)
        return
    prefer = os.environ.get("TAMC_BROKER", "auto")
    if prefer not in ("auto", "mosquitto", "embedded"):
        raise InputError(f"TAMC_BROKER={prefer!r}: use auto, mosquitto or embedded")
    with start_broker(prefer) as b:  # type: ignore[arg-type]
        yield b


class City:
    """A city for ``config.hours``. ``fleet``, ``requests``, ``savings`` (each machine's cash at the
    start) and ``wear`` replace the seeded ones (a test's scenario); ``agent`` is the machines' agent
    on a model already built (an eval's subject), instead of one built from ``config.model``. While
    it runs, what a live view reads is shared with the market's threads: ``nodes`` grows as
    machines are born."""

    def __init__(self, config: MarketConfig, *, regions: tuple[Region, ...] = DEFAULT_REGIONS,
                 fleet: list[MachineProfile] | None = None, requests: list[JobRequest] | None = None,
                 savings: dict[str, int] | None = None, wear: dict[str, float] | None = None, agent: MachineAgent | None = None) -> None:
        self.config = config
        self.regions = regions
        self.run_id = uuid.uuid4().hex[:6]
        self.fleet = list(fleet) if fleet is not None else build_fleet(config.machines, regions)
        model = DemandModel(load=config.load, hourly=FLAT if config.flat_demand else HOURLY_SHAPE, haggle_share=config.haggle)
        demand = requests if requests is not None else generate_jobs(self.fleet, regions, config.hours, seed=config.seed,
                                                                     model=model, prefix=f"{self.run_id}-")
        # each job id in the namespace of the region's requester, whose wallet's key signs its call (``hub.jobids``)
        self.requests = [r.model_copy(update={"job": r.job.model_copy(update={"id": owned(self._wallet(r.job.region), r.job.id)})})
                         for r in demand]
        self.data = DataDir(config.data_dir)
        self.clock = make_clock(config)
        self.agent = agent
        self._own_agent = agent is None and config.model.uses_model
        rng = random.Random(config.seed)
        self._savings = savings if savings is not None else {p.id: savings_of(p, rng) for p in self.fleet}
        self._wear = wear if wear is not None else {p.id: wear_of(rng) for p in self.fleet}
        self.requester_config = RequesterConfig(bid_window_s=config.bid_window_s, accept_window_s=config.accept_window_s,
                                                moves=config.moves)
        self.outcomes: list[JobOutcome] = []
        self.nodes: list[MachineNode] = []
        self.day_start = 0.0
        """Epoch seconds on ``clock`` when the day's demand began."""
        self._lock = threading.Lock()
        self._hubs: list[Hub] = []
        self._requesters: dict[str, Requester] = {}
        self._technicians: list[Technician] = []
        self._life: Lifecycle | None = None
        self._life_report: LifeReport | None = None
        self._worked: dict[str, float] = {}
        self._run_hours = 0.0
        self._final: tuple[dict[str, int], MemoryReport, dict[str, int]] | None = None
        self._started_at = 0.0
        self._stack = contextlib.ExitStack()

    # -- what a live view reads ----------------------------------------------------------------------

    def admit(self, name: str, role: Role) -> str:
        """The broker URL (with its credentials) the participant ``name`` connects with, in ``role``."""
        return self.broker.admit(name, role)

    def node(self, machine_id: str) -> MachineNode | None:
        return next((n for n in reversed(self.nodes) if n.id == machine_id), None)

    def hours(self) -> float:
        """Market hours since the day began."""
        return (self.clock.time() - self.day_start) / 3600

    def open_jobs(self) -> int:
        return sum(r.open_jobs for r in self._requesters.values())

    # -- start ---------------------------------------------------------------------------------------

    def __enter__(self) -> City:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> City:
        """Bring up the broker, memory, ledger, machines, requesters and life cycle, and post the day."""
        self._started_at = time.perf_counter()
        config, clock, stack = self.config, self.clock, self._stack
        try:
            self.data.make()
            self.broker = stack.enter_context(_broker(config.broker, config.broker_home))
            self.memory = stack.enter_context(MemoryOpener.open(config, clock))
            self.ledger_url = self.data.fresh_ledger()  # each run is a new city; keys carry over
            self.ledger = Ledger(self.ledger_url, clock=clock, durable=False)  # made anew each run: no sync to disk per commit
            self.keys = Keystore(self.data.keys)
            self.governance = Governance(self.ledger, clock=clock)
            if self._own_agent:
                self.agent = MachineAgent(config.model)
                if config.model.local:
                    self.agent.runner.run(self.agent.prime())  # the bidding prefix in the server's cache before the day starts
            # Every job runs as a workflow, checkpointed in memory: a city is one process and each run is a
            # new city (its ledger is recreated), so no run resumes another's jobs. A node in its own process
            # (`tamc agent`) checkpoints to SQLite or PostgreSQL and resumes them. On the virtual clock a
            # step runs on its node's own mailbox (it takes no market time); on the scaled one, off it.
            self.flows = JobFlows(in_memory(), worker=None if clock.virtual else Mailbox("workflows", clock=clock))
            stack.callback(self._teardown)
            self._populate()
        except BaseException:
            stack.close()
            raise
        return self

    def _wallet_name(self, region: str) -> str:
        return f"{region}-{self.run_id}"

    def _wallet(self, region: str) -> str:
        """The account the region's requester pays from; its job ids are in that account's namespace."""
        return settlement.requester_account(self._wallet_name(region))

    def _hub(self, name: str, role: Role) -> Hub:
        h = Hub(self.broker.admit(name, role), name=name, clock=self.clock)
        self._hubs.append(h)
        return h

    def _machine(self, profile: MachineProfile, identity: Identity, fails: frozenset[str] = frozenset(),
                 wear_pct: float = 0.0) -> MachineNode:
        # each machine its own connection: the broker announces its death by last will; a simulated
        # machine whose planned failures (``fail_rate``) fire half-way through their jobs
        driver = FaultyDriver(SimDriver(profile, self.clock, wear_pct=wear_pct), {job: (0.5, "fail") for job in fails})
        config = self.config
        node = MachineNode(profile, identity, self._hub(profile.id, "machine"), ledger=self.ledger, driver=driver, agent=self.agent,
                           governance=self.governance, memory=self.memory.machine(profile.id), telemetry_every_s=config.telemetry_every_s,
                           flows=self.flows, offers=config.moves, progress_steps=config.progress_steps)
        self.nodes.append(node)
        return node

    def _spawn(self, profile: MachineProfile) -> MachineNode:
        return self._machine(profile, self.keys.get_or_create(profile.id)).start()

    def _record(self, outcome: JobOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _populate(self) -> None:
        config, clock, ledger, keys = self.config, self.clock, self.ledger, self.keys
        if self.memory.store is not None and not self.memory.unavailable:
            self.memory.store.warm([job_text(r.job) for r in self.requests])
        self.day_start = clock.time()
        holders = register_fleet(ledger, self.governance, keys, self.fleet, config, self._savings, self.run_id)
        # every participant known now gets its broker user at once (one reload); children as they are born
        self.broker.admit_all([(p.id, "machine") for p in self.fleet] + [(f"requester-{r.name}", "requester") for r in self.regions]
                              + ([(f"tech-{r.name}", "technician") for r in self.regions] + [("lifecycle", "steward")]
                                 if config.life else []))
        for profile in self.fleet:
            # which jobs fail is the seed's: hashed without the run's random prefix, or each run would fail others
            fails = frozenset(r.job.id for r in self.requests
                              if fail_share(owned_local(r.job.id).removeprefix(f"{self.run_id}-"), profile.id) < config.fail_rate)
            self._machine(profile, keys.get_or_create(profile.id), fails, self._wear.get(profile.id, 0.0) if config.life else 0.0)
        for node in self.nodes:
            node.start()
        for region in self.regions:
            identity = keys.get_or_create(f"requester-{region.name}")
            budget = sum(r.reserve for r in self.requests if r.job.region == region.name)
            wallet = settlement.open_requester(ledger, self._wallet_name(region.name), identity.did, budget)  # == self._wallet(region)
            self._requesters[region.name] = Requester(identity, self._hub(f"requester-{region.name}", "requester").connect(), ledger, wallet,
                                                      config=self.requester_config, on_outcome=self._record).start()
        _settle_in(clock)  # presence and subscriptions reach the broker before the first call
        self.day_start = clock.time()  # the day starts now
        if config.life:
            life_hub = self._hub("lifecycle", "steward").connect()  # hires technicians for the machines, tells them votes
            for region in self.regions:
                tech_id = f"tech-{region.name}"
                self._technicians.append(Technician(tech_id, keys.get_or_create(tech_id), self._hub(tech_id, "technician").connect(),
                                                    ledger, regions=[region.name], clock=clock).start())
            collective = Collective(FAB_CELL, keys.get_or_create(FAB_CELL), self.governance)
            self._life = Lifecycle(governance=self.governance, ledger=ledger, keys=keys, hub=life_hub, clock=clock, nodes=self.nodes,
                                   spawn=self._spawn, regions=self.regions, holders=holders, collectives=[collective],
                                   config=config.life_config, requester_config=self.requester_config, seed=config.seed,
                                   run_id=self.run_id).start()
        for req in self.requests:  # the day's demand, each job posted at its hour of market time
            self._requesters[req.job.region].post(req.job, reserve=req.reserve, value=req.value, haggle=req.haggle,
                                                  after_s=self.day_start + req.at_h * 3600 - clock.time())

    # -- run -----------------------------------------------------------------------------------------

    def run(self, *, on_progress: Callable[[Snapshot], None] | None = None, stop: threading.Event | None = None) -> None:
        """The day, then the drain (open jobs close by their deadlines), then the last payments. Setting
        ``stop`` ends it at once: no more jobs are posted and the drain is skipped."""
        stopped: Callable[[], bool] = stop.is_set if stop is not None else bool
        clock, config = self.clock, self.config

        def progress(posted: int) -> None:
            report_progress(on_progress, self.hours(), config, self.requests, posted, self.outcomes, self._requesters, self.nodes)

        _run(clock, self.day_start + config.hours * 3600, stop=stopped,
             progress=lambda: progress(sum(1 for r in self.requests if r.at_h <= self.hours())))
        if self._life is not None:
            self._life.stop()
            self._life_report = self._life.report()
        # hours each machine worked while there was demand (the drain after it does not count)
        self._worked = {n.id: n.mailbox.call(lambda n=n: n.driver.telemetry().operating_hours) for n in self.nodes}
        _run(clock, clock.time() + config.drain_h * 3600, stop=lambda: stopped() or self.open_jobs() == 0,
             progress=lambda: progress(len(self.requests)))
        paid = sum(1 for o in self.outcomes if o.outcome == "paid")
        # the last 'paid' events reach the machines, which settle their costs
        _run(clock, clock.time() + 10 * clock.speed, stop=lambda: stopped() or sum(n.stats.paid for n in self.nodes) >= paid)
        self._run_hours = self.hours()

    # -- teardown and report ---------------------------------------------------------------------------

    def close(self) -> None:
        """Tear everything down, in order (safe to call twice); the report's final books are read on the way."""
        self._stack.close()

    def _teardown(self) -> None:
        started = time.perf_counter()
        if self._life is not None and self._life_report is None:
            self._step("life cycle", self._life.stop)
        for tech in self._technicians:
            self._step(f"technician {tech.id}", tech.stop)
        for node in self.nodes:
            self._step(f"machine {node.id}", functools.partial(self._leave, node))
        if self.agent is not None and self._own_agent:
            self._step("the machines' model client", self.agent.close)
        for r in self._requesters.values():
            self._step("requester", r.stop)
        _settle_in(self.clock)
        dropped: Counter[str] = Counter()
        for h in self._hubs:
            dropped.update(h.dropped())
            self._step(f"hub {h.name}", h.close)
        if self.flows.worker is not None:
            self._step("workflows' worker", self.flows.worker.close)
        audit = self.ledger.audit()
        if audit:
            log.error("ledger audit found problems: %s", audit)
        memory_report = self.memory.report(self.nodes)
        balances = self.ledger.balances()
        self.ledger.close()
        if isinstance(self.clock, VirtualClock):
            self.clock.close()
            log.info("virtual clock %s", dict(self.clock.stats))
        self._final = (dict(dropped), memory_report, balances)
        log.info("city %s torn down in %.1f s; the memory store and the broker next", self.run_id, time.perf_counter() - started)

    def _leave(self, node: MachineNode) -> None:
        try:
            save_snapshot(self.data.root, node.snapshot())
        except (OSError, TimeoutError) as exc:
            log.warning("machine=%s state not saved: %s", node.id, exc)
        node.stop()

    @staticmethod
    def _step(what: str, action: Callable[[], object]) -> None:
        """One step of teardown: a failure is logged and the rest goes on; a slow one says what it was."""
        began = time.perf_counter()
        try:
            action()
        except Exception:
            log.exception("teardown: stopping %s failed", what)
        took = time.perf_counter() - began
        if took > 2:
            log.warning("teardown: stopping %s took %.1f s", what, took)

    def report(self) -> MarketReport:
        """The day's report, once the city is torn down (its books are final then)."""
        if self._final is None:
            raise RuntimeError("the city's report is read after it is closed: leave its `with` block first")
        dropped, memory_report, balances = self._final
        parents = self._life_report.parents if self._life_report else {}
        worked = self._worked or {n.id: 0.0 for n in self.nodes}
        report = build_report(self.run_id, self.config, self.broker.kind, self.fleet, self.nodes, self.requests, self.outcomes, worked,
                              self._run_hours, dropped, time.perf_counter() - self._started_at, self.ledger_url, parents)
        report = report.model_copy(update={"memory": memory_report, "life": self._life_report})
        return report.model_copy(update={"digest": digest(report, balances, self.run_id)})


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


def simulate(config: MarketConfig, *, on_progress: Callable[[Snapshot], None] | None = None, regions: tuple[Region, ...] = DEFAULT_REGIONS,
             fleet: list[MachineProfile] | None = None, requests: list[JobRequest] | None = None,
             savings: dict[str, int] | None = None, wear: dict[str, float] | None = None,
             agent: MachineAgent | None = None) -> MarketReport:
    """A whole day on a ``City``, from start to report (what the demo, the evals and the benchmarks run)."""
    with City(config, regions=regions, fleet=fleet, requests=requests, savings=savings, wear=wear, agent=agent) as city:
        city.run(on_progress=on_progress)
    return city.report()
