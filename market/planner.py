"""The offline planner: a feasible schedule of the whole day, built in hindsight.

The LP bound (``market.welfare.hindsight_optimum``) relaxes twice (fractional jobs, windows that
are necessary but not sufficient), so the gap between the market and it mixes the mechanism's loss
with the bound's own slack. The planner closes that from below: it knows every job of the day in
advance, as the bound does, and builds a schedule a fleet could actually run — each machine works
one job at a time, starts a job no earlier than its arrival, finishes it by its deadline, and a
vehicle drives from where its last job left it. Between the two lies the true optimum.

How: from an empty schedule, insert every job where it adds the most welfare (densest first), then
try each unplaced job in place of a placed one of less welfare that can move elsewhere or go. A machine's set of jobs is feasible if
running it non-idling in arrival order or by earliest deadline meets every deadline. Welfare and
costs come from ``pair_terms``, the machines' own rules, as for the other yardsticks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from machines.profile import MachineProfile, Point
from market.demand import JobRequest
from market.welfare import Pair, WelfareResult, fcfs_dispatch, pair_terms

__all__ = ["Planned", "hindsight_schedule", "plan_day"]

_EPS = 1e-9
REACH_H = 6.0
"""The exchange tries, in place of a job, only those within this many hours of its window: a job
further off frees time the newcomer cannot use (measured: wider finds little more, slower)."""


@dataclass(frozen=True)
class Planned:
    """One job in a machine's schedule: when it starts and ends, and its welfare there."""

    job_id: str
    start_h: float
    end_h: float
    welfare: int


class _Fleet:
    """Pair terms by (machine, job, where the machine is), computed once."""

    def __init__(self, requests: Sequence[JobRequest], fleet: Sequence[MachineProfile]) -> None:
        self.requests, self.fleet = requests, fleet
        self._terms: dict[tuple[int, int, tuple[float, float] | None], Pair | None] = {}
        self.home = [p.vehicle.home if p.vehicle else None for p in fleet]
        self.at = [r.at_h for r in requests]
        self.due = [r.at_h + r.job.deadline_h for r in requests]

    def terms(self, i: int, j: int, at: Point | None) -> Pair | None:
        key = (i, j, (at.x_km, at.y_km) if at is not None else None)
        if key not in self._terms:
            self._terms[key] = pair_terms(self.fleet[i], self.requests[j], position=at)
        return self._terms[key]

    def value_of(self, j: int) -> int:
        """The most welfare job ``j`` could bring: its value (no machine does it for less than nothing)."""
        return self.requests[j].value

    def may(self, i: int, j: int) -> bool:
        """Whether machine ``i`` might do job ``j`` at all (a vehicle: from wherever it is)."""
        return self.home[i] is not None or self.terms(i, j, None) is not None

    def run(self, i: int, jobs: Sequence[int]) -> list[Planned] | None:
        """Machine ``i`` doing ``jobs``: the first of arrival order or earliest deadline that meets
        every deadline, else None."""
        for key in (self._arrival, self._deadline):
            planned = self._simulate(i, jobs, key)
            if planned is not None:
                return planned
        return None

    def _arrival(self, j: int) -> tuple[float, float]:
        return (self.at[j], self.due[j])

    def _deadline(self, j: int) -> tuple[float, float]:
        return (self.due[j], self.at[j])

    def _simulate(self, i: int, jobs: Sequence[int], key: Callable[[int], tuple[float, float]]) -> list[Planned] | None:
        """Non-idling: when the machine is free it starts, of the jobs already arrived, the first by
        ``key`` (or waits for the next arrival)."""
        at_h, due = self.at, self.due
        order = sorted(jobs, key=self._arrival)
        t, where, k = 0.0, self.home[i], 0
        out: list[Planned] = []
        waiting: list[int] = []
        while k < len(order) or waiting:
            while k < len(order) and at_h[order[k]] <= t + _EPS:
                waiting.append(order[k])
                k += 1
            if not waiting:
                t = at_h[order[k]]
                continue
            j = min(waiting, key=key) if len(waiting) > 1 else waiting[0]
            waiting.remove(j)
            pair = self.terms(i, j, where)
            if pair is None:
                return None
            end = t + pair.hours
            if end > due[j] + _EPS:
                return None
            out.append(Planned(self.requests[j].job.id, t, end, pair.welfare))
            t = end
            drop = self.requests[j].job.dropoff
            if drop is not None:
                where = drop
        return out


def hindsight_schedule(requests: Sequence[JobRequest], fleet: Sequence[MachineProfile], *,
                       horizon_h: float | None = None) -> WelfareResult:
    """The planner's welfare over the day (see the module's docstring); ``busy_hours`` counts work
    before ``horizon_h`` (all of it without one). First-come's schedule is a feasible one too:
    where it is better (it never was on the seeded days), it is the plan."""
    runs = plan_day(requests, fleet)
    busy = sum(max(0.0, min(p.end_h, horizon_h) - p.start_h) if horizon_h is not None else p.end_h - p.start_h
               for run in runs.values() for p in run)
    planned = WelfareResult(welfare=sum(p.welfare for run in runs.values() for p in run), filled=sum(map(len, runs.values())),
                            busy_hours=busy, assignment={p.job_id: machine for machine, run in runs.items() for p in run})
    first_come = fcfs_dispatch(requests, fleet, horizon_h=horizon_h)
    return planned if planned.welfare >= first_come.welfare else first_come


def plan_day(requests: Sequence[JobRequest], fleet: Sequence[MachineProfile]) -> dict[str, list[Planned]]:
    """Each machine's schedule, by machine id, in the order it works."""
    runs = _improve(_Fleet(requests, fleet))
    return {fleet[i].id: run for i, run in enumerate(runs)}


def _improve(f: _Fleet) -> list[list[Planned]]:
    """From an empty schedule: every job inserted where it pays most, then exchanged in where it pays."""
    requests, fleet = f.requests, f.fleet
    plan: list[list[int]] = [[] for _ in fleet]
    runs: list[list[Planned]] = [[] for _ in fleet]
    placed: set[int] = set()
    candidates = _by_density(f, list(range(len(requests))))

    def welfare_of(i: int) -> int:
        return sum(p.welfare for p in runs[i])

    def best_insert(j: int, skip: int = -1) -> tuple[int, int, list[Planned]] | None:
        """The machine where adding ``j`` raises welfare most: (gain, machine, its new run)."""
        best = None
        for i in range(len(fleet)):
            if i == skip or not f.may(i, j):
                continue
            run = f.run(i, [*plan[i], j])
            if run is None:
                continue
            gain = sum(p.welfare for p in run) - welfare_of(i)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, i, run)
        return best

    for j in candidates:  # insertion, densest first
        found = best_insert(j)
        if found is not None:
            _, i, run = found
            plan[i].append(j)
            runs[i] = run
            placed.add(j)
    for j in candidates:  # exchange: an unplaced job in place of a placed one that moves or goes
        if j in placed:
            continue
        best: tuple[int, int, int, list[Planned], tuple[int, list[Planned]] | None] | None = None
        for i in range(len(fleet)):
            if not f.may(i, j):
                continue
            slots = {p.job_id: p for p in runs[i]}
            for out in plan[i]:
                slot = slots[requests[out].job.id]
                if slot.welfare >= f.value_of(j) or slot.end_h <= f.at[j] - REACH_H or slot.start_h >= f.due[j] + REACH_H:
                    continue  # j cannot add more than it takes out, or out's time is not where j could go
                swapped = f.run(i, [x for x in plan[i] if x != out] + [j])
                if swapped is None:
                    continue
                gain = sum(p.welfare for p in swapped) - welfare_of(i)
                moved = None
                if gain <= 0 or (best is not None and gain <= best[0]):
                    continue
                elsewhere = best_insert(out, skip=i)
                if elsewhere is not None:
                    gain += elsewhere[0]
                    moved = (elsewhere[1], elsewhere[2])
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, i, out, swapped, moved)
        if best is None:
            continue
        _, i, out, run, moved = best
        plan[i] = [x for x in plan[i] if x != out] + [j]
        runs[i] = run
        placed.add(j)
        placed.discard(out)
        if moved is not None:
            plan[moved[0]].append(out)
            runs[moved[0]] = moved[1]
            placed.add(out)
    return runs


def _by_density(f: _Fleet, jobs: list[int]) -> list[int]:
    """Jobs by their best welfare per hour on any machine from home, densest first (ties: arrival)."""

    def density(j: int) -> float:
        pairs = [p for i in range(len(f.fleet)) if (p := f.terms(i, j, f.home[i])) is not None and p.welfare > 0]
        return max((p.welfare / max(p.hours, 1e-6) for p in pairs), default=0.0)

    scored = [(density(j), j) for j in jobs]
    return [j for d, j in sorted(scored, key=lambda x: (-x[0], f.requests[x[1]].at_h)) if d > 0]
