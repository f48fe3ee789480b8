"""A seeded simulated day over the real broker: every job closes once, none is awarded to two
machines at once, and the ledger holds exactly the payments, costs and splits of the run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import broker_args, on_broker

from hub.broker import RunningBroker
from ledger import Ledger, settlement, split_pro_rata
from machines.regions import DEFAULT_REGIONS
from market.city import simulate
from market.config import MarketConfig
from market.demand import DemandModel, generate_jobs
from market.fleet import COLLECTIVE_MEMBERS, FAB_CELL, build_fleet, stakeholders
from market.planner import hindsight_schedule
from market.report import MarketReport
from market.welfare import fcfs_dispatch, hindsight_optimum

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def day(broker: RunningBroker, tmp_path_factory: pytest.TempPathFactory) -> MarketReport:
    # seed 1, 24 h, 12 machines at full load: 514 jobs; 3% of job/machine pairs fail half-way, forcing takeovers
    # the life cycle and memory are off: this day checks the market's money alone (test_lifecycle checks a
    # life, test_memory_market what memory does to prices). The demo's own windows, on the virtual clock: the
    # day is the market's, whatever the CPU does meanwhile.
    config = MarketConfig(seed=1, hours=24, machines=12, load=1.0, **on_broker(broker), fail_rate=0.03,
                          data_dir=tmp_path_factory.mktemp("city"), life=False, memory="off")
    return simulate(config)


def test_a_seeded_day_of_500_jobs_closes_every_job_exactly_once(day: MarketReport) -> None:
    assert day.posted >= 500
    assert day.paid + day.expired + day.refunded == day.posted and day.unfinished == 0
    ids = [o.job_id for o in day.outcomes]
    assert len(ids) == len(set(ids)) == day.posted
    assert day.double_awards == 0
    assert day.takeovers > 0, "the injected failures must have been taken over"
    assert day.paid > day.posted // 2
    assert {m.kind for m in day.machines} >= {"printer_3d", "car", "cnc_mill"} and len(day.machines) >= 12


def test_ledger_holds_exactly_the_payments_costs_and_splits_of_the_run(day: MarketReport) -> None:
    ledger = Ledger(day.ledger_url)
    assert ledger.audit() == []
    balances = ledger.balances()
    paid = [o for o in day.outcomes if o.outcome == "paid"]
    spent = sum(o.price or 0 for o in paid)
    # every escrow is closed: released to the machine that did the job, or refunded
    assert all(balances.get(f"escrow:{o.job_id}", 0) == 0 for o in day.outcomes)
    # requesters were minted their budgets and are short exactly the prices of the jobs done
    requesters = sum(bal for acct, bal in balances.items() if acct.startswith("requester:"))
    assert -balances["system:issuance"] - requesters == spent
    # each machine took in its jobs' prices and paid all of it out
    revenue: Counter[str] = Counter()
    for o in paid:
        assert o.machine_id is not None and o.price is not None
        revenue[o.machine_id] += o.price
    fleet = build_fleet(12, DEFAULT_REGIONS)
    holders = {p.id: {settlement.holder(h): u for h, u in stakeholders(i, p).items()} for i, p in enumerate(fleet)}
    members = {settlement.holder(m): 1 for m in COLLECTIVE_MEMBERS}
    expected: Counter[str] = Counter()
    energy = materials = 0
    for m in day.machines:
        assert m.revenue == revenue[m.machine_id]
        assert balances.get(f"machine:{m.machine_id}", 0) == 0
        e, w, c, owners = _costs_from_ledger(ledger, day).get(m.machine_id, (0, 0, 0, []))
        assert e + w + c == m.costs and m.profit == m.revenue - m.costs
        assert balances.get(f"reserve:{m.machine_id}", 0) == w  # wear reserve
        energy += e
        materials += c
        for share in owners:  # each job's remainder, split pro rata by shares, to the micro-unit
            for holder, amount in split_pro_rata(share, holders[m.machine_id]).items():
                if holder == FAB_CELL:  # the fab cell passes its part on to its members, split the same way
                    expected.update(split_pro_rata(amount, members))
                else:
                    expected[holder] += amount
    assert balances.get("utility:energy", 0) == energy
    assert balances.get("supplier:materials", 0) == materials
    for holder, amount in expected.items():
        assert balances.get(holder, 0) == amount, holder
    wear = sum(balances.get(f"reserve:{m.machine_id}", 0) for m in day.machines)
    assert balances.get(FAB_CELL, 0) == 0
    assert sum(expected.values()) + energy + wear + materials == spent


def _costs_from_ledger(ledger: Ledger, day: MarketReport) -> dict[str, tuple[int, int, int, list[int]]]:
    """Per machine: energy, wear and materials paid, and what each paid job left for the owners,
    read back from the postings under their job keys."""
    out: dict[str, tuple[int, int, int, list[int]]] = {}
    for o in day.outcomes:
        if o.outcome != "paid" or o.machine_id is None or o.price is None:
            continue
        posting = ledger.posting(f"costs:{o.job_id}:{o.machine_id}")  # energy, wear and materials: one posting
        paid_to = {leg.account: leg.amount for leg in posting.legs if leg.amount > 0} if posting else {}
        e, w, c = (paid_to.get(a, 0) for a in ("utility:energy", f"reserve:{o.machine_id}", "supplier:materials"))
        owners = o.price - e - w - c
        prev = out.get(o.machine_id, (0, 0, 0, []))
        out[o.machine_id] = (prev[0] + e, prev[1] + w, prev[2] + c, [*prev[3], owners])
    return out


def test_market_beats_nothing_it_cannot_and_the_yardsticks_are_sane(day: MarketReport) -> None:
    assert 0 < day.welfare <= day.optimum_welfare
    assert 0 < day.baseline_welfare <= day.planner_welfare <= day.optimum_welfare
    assert 0 <= day.fleet_utilization <= 1
    # the planner's utilization is its schedule's busy hours over the fleet's (the idle no schedule it finds avoids)
    fleet = build_fleet(12, DEFAULT_REGIONS)
    jobs = generate_jobs(fleet, DEFAULT_REGIONS, 24, seed=1, model=DemandModel(load=1.0), prefix=day.run_id + "-")
    plan = hindsight_schedule(jobs, fleet, horizon_h=24)
    assert plan.welfare == day.planner_welfare
    assert day.planner_utilization == round(min(plan.busy_hours / (24 * 12), 1.0), 4) and 0 < day.planner_utilization < 1


def test_the_market_allocates_above_first_come_and_near_the_planner(day: MarketReport) -> None:
    """Efficiency floors as behaviour: the seeded day is the market's on the virtual clock, so these
    figures are the mechanism's, not the CPU's, and the same every run. Measured: market 0.741,
    planner 0.872, first-come 0.641 (full load, 3 % of pairs failing half-way: takeovers cost the
    market, not the planner, which knows no failures)."""
    figures = f"market {day.efficiency}, planner {day.planner_efficiency}, first-come {day.baseline_efficiency}"
    assert day.efficiency >= day.baseline_efficiency + 0.05, figures
    assert day.efficiency >= day.planner_efficiency - 0.14, f"{figures} {day.digest}"
    assert day.efficiency >= 0.73, figures
    assert day.paid >= day.baseline_filled, f"filled {day.paid}, first-come {day.baseline_filled}"


def test_demand_is_the_same_for_the_same_seed_and_follows_the_load() -> None:
    fleet = build_fleet(12, DEFAULT_REGIONS)
    a = generate_jobs(fleet, DEFAULT_REGIONS, 24, seed=3)
    b = generate_jobs(fleet, DEFAULT_REGIONS, 24, seed=3)
    assert a == b
    busy = generate_jobs(fleet, DEFAULT_REGIONS, 24, seed=3, model=DemandModel(load=1.7))
    assert len(busy) > 1.5 * len(a)
    assert all(0 <= r.at_h < 24 and r.reserve <= r.value for r in a)


def test_optimum_bounds_the_baseline_on_the_same_stream() -> None:
    fleet = build_fleet(12, DEFAULT_REGIONS)
    jobs = generate_jobs(fleet, DEFAULT_REGIONS, 12, seed=5)
    best = hindsight_optimum(jobs, fleet, 12 + max(r.job.deadline_h for r in jobs))
    fcfs = fcfs_dispatch(jobs, fleet)
    assert 0 < fcfs.welfare <= best.welfare
    assert set(fcfs.assignment) <= {r.job.id for r in jobs}


def test_tamc_demo_prints_a_machine_readable_summary_last(tmp_path: Path, broker: RunningBroker) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tamc", "demo", "--hours", "3", "--seed", "2", *broker_args(broker),
         "--data-dir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["broker"] == "external" and summary["posted"] > 0
    assert summary["paid"] + summary["expired"] + summary["refunded"] == summary["posted"]
    assert len(summary["machines"]) == 12
    assert "done:" in run.stderr  # progress and the closing line go to stderr with --json
