"""The offline planner is an honest yardstick: its schedule is one a fleet could run (one job at a
time, after arrival, before the deadline, each job once), it sits between first-come dispatch and
the LP bound on seeded days, and it keeps a valuable late job that an early cheap one would block."""

from __future__ import annotations

import itertools

import pytest
from city import job, printer

from machines.regions import DEFAULT_REGIONS
from market.demand import DemandModel, JobRequest, generate_jobs
from market.fleet import build_fleet
from market.planner import hindsight_schedule, plan_day
from market.welfare import fcfs_dispatch, hindsight_optimum, pair_terms


@pytest.mark.parametrize("seed", [1, 2])
def test_the_plan_is_a_schedule_the_fleet_could_run_and_sits_between_first_come_and_the_bound(seed: int) -> None:
    fleet = build_fleet(6, DEFAULT_REGIONS)
    requests = generate_jobs(fleet, DEFAULT_REGIONS, 8.0, seed=seed, model=DemandModel(load=1.5))
    by_id = {r.job.id: r for r in requests}
    runs = plan_day(requests, fleet)
    done = [p.job_id for run in runs.values() for p in run]
    assert len(done) == len(set(done)), "a job planned twice"
    for machine, run in runs.items():
        profile = next(p for p in fleet if p.id == machine)
        for before, after in itertools.pairwise(run):
            assert after.start_h >= before.end_h - 1e-9, f"{machine} works two jobs at once"
        for p in run:
            r = by_id[p.job_id]
            assert p.start_h >= r.at_h - 1e-9 and p.end_h <= r.at_h + r.job.deadline_h + 1e-9, (machine, p)
            if profile.vehicle is None:  # a workshop's terms do not depend on where it is
                assert p.welfare == pair_terms(profile, r).welfare  # type: ignore[union-attr]
    planned = hindsight_schedule(requests, fleet)
    assert planned.welfare == sum(p.welfare for run in runs.values() for p in run)
    first_come = fcfs_dispatch(requests, fleet)
    bound = hindsight_optimum(requests, fleet, 8.0 + max(r.job.deadline_h for r in requests))
    assert first_come.welfare < planned.welfare <= bound.welfare, (first_come.welfare, planned.welfare, bound.welfare)


def test_an_early_cheap_job_does_not_block_a_later_valuable_one() -> None:
    fleet = [printer("prusa-only", 2000)]
    cheap, valuable = job("cheap", deadline_h=3), job("valuable", deadline_h=2.5)
    hours = pair_terms(fleet[0], JobRequest(at_h=0, job=cheap, reserve=10**9, value=10**9)).hours  # type: ignore[union-attr]
    assert 1.0 < hours < 2.5  # one fits by either deadline, not both: the cheap one would end after the valuable one's
    requests = [JobRequest(at_h=0.0, job=cheap, reserve=60_000_000, value=60_000_000),
                JobRequest(at_h=0.5, job=valuable, reserve=400_000_000, value=400_000_000)]
    assert fcfs_dispatch(requests, fleet).assignment == {"cheap": "prusa-only"}
    assert hindsight_schedule(requests, fleet).assignment == {"valuable": "prusa-only"}
