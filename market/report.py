"""What a simulated day decided: the report, its fingerprint, and the live view's progress.

``digest`` fingerprints every outcome (jobs, machines' books, life events, ledger balances; run ids
aside), so two runs of one seed on the virtual clock are compared by one field.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agents.node import MachineNode
from agents.requester import JobOutcome, Requester
from core.money import format_units
from machines.profile import MachineProfile
from market.config import ClockKind, MarketConfig
from market.demand import JobRequest
from market.lifecycle import LifeReport
from market.planner import hindsight_schedule
from market.welfare import fcfs_dispatch, hindsight_optimum

__all__ = ["MachineReport", "MarketReport", "MemoryReport", "ModelReport", "Snapshot", "build_report", "describe", "digest",
           "outcome_facts", "report_progress"]


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


class HaggleReport(BaseModel):
    """How the day's negotiations went: deals, what they saved, and how the surplus split.

    A paid job's surplus is the requester's (its value less the price) and the machine's (the price
    less what the job cost it in cash). The requester's share of the two is 0.5 at the Nash
    bargaining split when both sides' reservation values are those: the yardstick for who got more."""

    model_config = ConfigDict(frozen=True)

    haggled: int
    """Jobs whose requester countered the bids."""
    deals: int
    """Of those, the ones where a machine agreed to the requester's terms (else the best standing offer was awarded)."""
    paid: int
    saved: int
    """Paid haggled jobs: the best sealed bids less the prices paid."""
    requester_surplus: int
    machine_surplus: int
    requester_share: float | None
    """The requester's share of the haggled jobs' surplus."""
    plain_requester_share: float | None
    """The same for the jobs paid without haggling, to compare."""
    answers: dict[str, int]
    """The machines' answers to counters, by move (accept, counter, withdraw)."""
    paths: dict[str, int]
    """Those answers by the path that made them (rules, llm, llm-clamped, rules-fallback)."""
    dropped: dict[str, int]
    """Negotiation messages the machines refused, by reason (late, out_of_turn, not_requester, unsealable…)."""


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
    planner_welfare: int
    """The offline planner's feasible schedule of the same jobs (``market.planner``): the true
    optimum lies between it and ``optimum_welfare``, the LP bound."""
    planner_efficiency: float
    planner_filled: int
    planner_utilization: float
    """The share of the fleet's hours the planner's schedule keeps busy: the idle no schedule it
    finds avoids (how much of the market's idle is the day's, not the mechanism's)."""
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
    """A fingerprint of every outcome (``market.report.digest``): compare two runs by this one field."""
    decisions: dict[str, int] = Field(default_factory=dict)
    """Bid decisions by the path that made them (rules, llm, llm-clamped, rules-fallback, rules-fast-path)."""
    model: ModelReport | None = None
    memory: MemoryReport | None = None
    life: LifeReport | None = None
    haggle: HaggleReport | None = None
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



def digest(report: MarketReport, balances: dict[str, int], run_id: str) -> str:
    """A fingerprint of what the day decided: every job's outcome, machine's books, life event and
    ledger balance (run ids aside). Two runs of one seed on the virtual clock give the same one."""
    facts = outcome_facts(report, balances, run_id)
    if path := os.environ.get("TAMC_DIGEST_FACTS"):  # to see what two runs disagree on: diff the two files
        Path(path).write_text(json.dumps(facts, indent=1), "utf-8")
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def outcome_facts(report: MarketReport, balances: dict[str, int], run_id: str) -> dict[str, object]:
    """What ``digest`` fingerprints: the run's id replaced by ``RUN``, job ids without their
    requester's namespace (its wallet, named by the run: no decision of the day's), and the lists of
    what happened sorted (jobs that close, or lives that change, at one market instant may be told
    in either order)."""
    facts = {
        "counts": [report.posted, report.paid, report.expired, report.refunded, report.unfinished, report.takeovers],
        "welfare": [report.welfare, report.optimum_welfare, report.baseline_welfare],
        "machines": [[m.machine_id, m.jobs, m.revenue, m.costs, m.profit, m.status, round(m.wear_pct, 3)] for m in report.machines],
        "outcomes": [[o.job_id, o.outcome, o.machine_id, o.price, o.bids, o.awards, o.takeovers] for o in report.outcomes],
        "life": [[e.at_h, e.machine_id, e.event, e.detail] for e in report.life.events] if report.life else [],
        "ledger": list(balances.items()),
    }
    text = re.sub(rf"requester:[A-Za-z0-9_-]*-{re.escape(run_id)}\.", "", json.dumps(facts, default=str))
    named: dict[str, object] = json.loads(text.replace(run_id, "RUN"))
    for told in ("outcomes", "life", "ledger"):
        named[told] = sorted(named[told], key=json.dumps)  # type: ignore[call-overload]
    return named


def report_progress(on_progress: Callable[[Snapshot], None] | None, hours: float, config: MarketConfig,
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




def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def build_report(run_id: str, config: MarketConfig, broker_kind: str, fleet: list[MachineProfile], nodes: list[MachineNode],
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
    planner = hindsight_schedule(requests, fleet, horizon_h=config.hours)
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
            latency_ms_p50=percentile(model_ms, 0.5), latency_ms_p99=percentile(model_ms, 0.99), errors=dict(errors),
        )
    return MarketReport(
        haggle=haggle_report(outcomes, nodes, costs_by_job) if config.haggle > 0 else None,
        run_id=run_id, seed=config.seed, hours=config.hours, broker=broker_kind, machines=machines,
        posted=len(requests), paid=counts["paid"], expired=counts["expired"], refunded=counts["refunded"],
        unfinished=len(requests) - len(outcomes),
        takeovers=sum(o.takeovers for o in outcomes), double_awards=double_awards(nodes),
        fleet_utilization=round(busy / (config.hours * len(nodes)), 4),
        revenue=sum(m.revenue for m in machines), costs=sum(m.costs for m in machines),
        profit=sum(m.profit for m in machines), welfare=welfare, optimum_welfare=optimum.welfare,
        efficiency=round(welfare / optimum.welfare, 4) if optimum.welfare else 1.0,
        baseline_welfare=baseline.welfare,
        baseline_efficiency=round(baseline.welfare / optimum.welfare, 4) if optimum.welfare else 1.0,
        baseline_filled=baseline.filled,
        baseline_utilization=round(baseline.busy_hours / (config.hours * len(nodes)), 4),
        planner_welfare=planner.welfare, planner_filled=planner.filled,
        planner_utilization=round(min(planner.busy_hours / (config.hours * len(fleet)), 1.0), 4),
        planner_efficiency=round(planner.welfare / optimum.welfare, 4) if optimum.welfare else 1.0,
        accept_latency_ms_p50=percentile(latencies, 0.5), accept_latency_ms_p99=percentile(latencies, 0.99),
        dropped=dropped, wall_s=round(wall_s, 2),
        machine_days_per_s=round(len(nodes) * run_hours / 24 / wall_s, 4),
        ledger_url=ledger_url, decisions=dict(paths), model=model, outcomes=sorted(outcomes, key=lambda o: o.job_id),
        clock=config.clock, deterministic=config.clock == "virtual" and not config.model.uses_model,
    )


def haggle_report(outcomes: list[JobOutcome], nodes: list[MachineNode], costs_by_job: dict[str, int]) -> HaggleReport:
    def split(paid: list[JobOutcome]) -> tuple[int, int, float | None]:
        buyer = sum(o.value - (o.price or 0) for o in paid)
        seller = sum((o.price or 0) - costs_by_job.get(o.job_id, 0) for o in paid)
        return buyer, seller, round(buyer / (buyer + seller), 4) if buyer + seller > 0 else None

    haggled = [o for o in outcomes if o.haggled]
    paid = [o for o in haggled if o.outcome == "paid"]
    buyer, seller, share = split(paid)
    plain = split([o for o in outcomes if not o.haggled and o.outcome == "paid"])[2]
    answers: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for n in nodes:
        answers.update(n.stats.haggles)
        paths.update(n.stats.haggle_paths)
        dropped.update(n.stats.haggle_dropped)
    return HaggleReport(haggled=len(haggled), deals=sum(o.deal for o in haggled), paid=len(paid),
                        saved=sum((o.best_bid or 0) - (o.price or 0) for o in paid), requester_surplus=buyer, machine_surplus=seller,
                        requester_share=share, plain_requester_share=plain, answers=dict(answers), paths=dict(paths),
                        dropped=dict(dropped))


def double_awards(nodes: list[MachineNode]) -> int:
    """Jobs that more than one machine finished and was paid for (the protocol must make this 0)."""
    paid = Counter(job for n in nodes for job, _ in n.stats.settled)
    return sum(1 for c in paid.values() if c > 1)


def describe(report: MarketReport) -> str:
    text = (f"{report.paid}/{report.posted} jobs paid, revenue {format_units(report.revenue)}, "
            f"efficiency {report.efficiency:.1%} of the bound (planner {report.planner_efficiency:.1%}, "
            f"first-come {report.baseline_efficiency:.1%})")
    if report.life is not None:
        life = report.life
        text += (f"; life: {life.births} births, {life.moves} moves, {life.parkings} parkings, {life.deaths} deaths, "
                 f"{life.maintenances} maintenances")
    if (h := report.haggle) is not None:
        text += f"; {h.haggled} jobs haggled, {h.deals} deals, {format_units(h.saved)} saved on the best bids"
    if report.memory is not None and report.memory.store != "off":
        text += (f"; memory unavailable ({report.memory.unavailable})" if report.memory.unavailable
                 else f"; {report.memory.priced} bids priced from memory")
    m = report.model
    if m is None:
        return text + "; bids by the rule engine (no model configured)"
    p50 = f"{m.latency_ms_p50:.0f} ms" if m.latency_ms_p50 is not None else "n/a"
    return text + (f"; model {m.model}: asked {m.asked} times, {m.calls} calls, {m.input_tokens}+{m.output_tokens} tokens, "
                   f"p50 {p50}, {report.decisions.get('rules-fallback', 0)} fallbacks")
