"""Welfare yardsticks for a run: the hindsight optimum and a first-come-first-served dispatcher.

Welfare of a filled job = its value to the requester − the variable cost (energy, wear,
consumables, travel) of the machine that did it; prices are transfers and cancel out.

**Hindsight optimum** (an upper bound): with every job of the run known in advance, choose for
each job at most one machine to maximise total welfare, subject to, for every machine and every
window [a, a + L) on a quarter-hour grid (L from half an hour to 16 h, and the whole run), the
work of the jobs whose whole [arrival, deadline] lies inside the window fitting in L hours. A pair
(job, machine) is allowed when the machine's own rules accept the job from idle (capability,
material, size, range, territory, deadline) and the requester's reserve covers the machine's least
price (its full cost or its floor): owners' policies bind the optimum too. A vehicle is taken to
stand at the pickup: in a real schedule it drives there empty from wherever its last job ended, so
its hours and costs can only be larger. Solved exactly as a linear program (scipy ``linprog``,
HiGHS) with each x in [0, 1]. The three relaxations (fractional jobs; windows necessary but not
sufficient for a schedule; vehicles without empty drives) can only raise the bound, so the
efficiency reported is a lower bound on the true one; ``market.planner``'s feasible schedule
bounds the true optimum from below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from machines.profile import MachineProfile, Point
from market.demand import JobRequest
from pricing.rules import MachineStatus, decide

__all__ = ["Pair", "WelfareResult", "fcfs_dispatch", "hindsight_optimum", "pair_terms"]

WINDOWS_H = (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16)
GRID_H = 0.25


class WelfareResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    welfare: int
    filled: int
    busy_hours: float
    assignment: dict[str, str]
    """job id -> machine id."""


@dataclass(frozen=True)
class Pair:
    hours: float
    cost: int
    """Variable cost, micro-units."""
    welfare: int


def _home(profile: MachineProfile) -> Point | None:
    return profile.vehicle.home if profile.vehicle else None


def _best_start(profile: MachineProfile, request: JobRequest) -> Point | None:
    """Where a machine would best be when a job starts: a vehicle at the pickup (no empty drive),
    so no schedule's travel can beat the bound's."""
    return (request.job.pickup or profile.vehicle.home) if profile.vehicle else None


def pair_terms(profile: MachineProfile, request: JobRequest, *, position: Point | None = None, queue_hours: float = 0.0) -> Pair | None:
    """Hours, variable cost and welfare of ``profile`` doing ``request``, or None if its rules
    refuse it or the reserve does not cover its least price."""
    job = request.job.model_copy(update={"max_price": None})
    d = decide(profile, job, MachineStatus(position=position or _home(profile), queue_hours=queue_hours))
    if d.action != "bid" or d.cost is None or d.eta_h is None:
        return None
    if request.reserve < max(d.cost.total, profile.policy.price_floor):
        return None
    return Pair(hours=d.eta_h - queue_hours, cost=d.cost.variable, welfare=request.value - d.cost.variable)


def hindsight_optimum(requests: Sequence[JobRequest], fleet: Sequence[MachineProfile], run_hours: float) -> WelfareResult:
    cols: list[tuple[int, int, Pair]] = []
    for j, req in enumerate(requests):
        for i, prof in enumerate(fleet):
            pair = pair_terms(prof, req, position=_best_start(prof, req))
            if pair is not None and pair.welfare > 0:
                cols.append((j, i, pair))
    if not cols:
        return WelfareResult(welfare=0, filled=0, busy_hours=0.0, assignment={})
    n = len(cols)
    rows, colidx, vals, upper = [], [], [], []
    by_job: dict[int, list[int]] = {}
    by_machine: dict[int, list[int]] = {}
    for k, (j, i, _) in enumerate(cols):
        by_job.setdefault(j, []).append(k)
        by_machine.setdefault(i, []).append(k)
    r = 0
    for j in sorted(by_job):  # each job at most once
        members = by_job[j]
        rows += [r] * len(members)
        colidx += members
        vals += [1.0] * len(members)
        upper.append(1.0)
        r += 1
    horizon = math.ceil(run_hours)
    starts = [i * GRID_H for i in range(int(horizon / GRID_H))]
    windows = sorted({(a, min(a + length, horizon)) for length in WINDOWS_H for a in starts} | {(0.0, float(horizon))})
    for i in sorted(by_machine):
        # the machine's pairs by arrival: a window holds those arriving in it whose deadline is in it too
        mine = sorted(by_machine[i], key=lambda k: requests[cols[k][0]].at_h)
        at = np.array([requests[cols[k][0]].at_h for k in mine])
        end = np.array([requests[cols[k][0]].at_h + requests[cols[k][0]].job.deadline_h for k in mine])
        hours = np.array([cols[k][2].hours for k in mine])
        ks = np.array(mine)
        for a, b in windows:
            lo, hi = np.searchsorted(at, a, "left"), np.searchsorted(at, b, "right")
            if lo == hi:
                continue
            inside = np.nonzero(end[lo:hi] <= b)[0] + lo
            if not len(inside) or hours[inside].sum() <= b - a:
                continue  # cannot bind
            rows += [r] * len(inside)
            colidx += ks[inside].tolist()
            vals += hours[inside].tolist()
            upper.append(float(b - a))
            r += 1
    a_matrix = coo_matrix((vals, (rows, colidx)), shape=(r, n)).tocsr()
    c = -np.array([p.welfare for _, _, p in cols], dtype=float)
    res = linprog(c, A_ub=a_matrix, b_ub=np.array(upper), bounds=(0, 1), method="highs")
    if res.x is None:
        raise RuntimeError(f"the hindsight optimum could not be solved: {res.message}")
    x = res.x
    return WelfareResult(
        welfare=round(-res.fun), filled=round(float(x.sum())),
        busy_hours=float(sum(x[k] * p.hours for k, (_, _, p) in enumerate(cols))),
        assignment={requests[j].job.id: fleet[i].id for k, (j, i, _) in enumerate(cols) if x[k] > 0.5},
    )


def fcfs_dispatch(requests: Sequence[JobRequest], fleet: Sequence[MachineProfile], *, horizon_h: float | None = None) -> WelfareResult:
    """The baseline: jobs in arrival order, each to the machine that can start it soonest and still
    meet its deadline (ties to the fleet's order), at once and for good; no prices compared.
    ``busy_hours`` counts work done before ``horizon_h`` (all of it without one)."""
    free_at = [0.0] * len(fleet)
    position = [_home(p) for p in fleet]
    welfare, busy, assignment = 0, 0.0, {}
    for req in sorted(requests, key=lambda r: r.at_h):
        best: tuple[float, int, Pair] | None = None
        for i, prof in enumerate(fleet):
            wait = max(free_at[i] - req.at_h, 0.0)
            pair = pair_terms(prof, req, position=position[i], queue_hours=wait)
            if pair is not None and (best is None or req.at_h + wait < best[0]):
                best = (req.at_h + wait, i, pair)
        if best is None:
            continue
        start, i, pair = best
        free_at[i] = start + pair.hours
        if req.job.dropoff is not None:
            position[i] = req.job.dropoff
        welfare += pair.welfare
        end = start + pair.hours
        busy += max(0.0, min(end, horizon_h) - start) if horizon_h is not None else pair.hours
        assignment[req.job.id] = fleet[i].id
    return WelfareResult(welfare=welfare, filled=len(assignment), busy_hours=busy, assignment=assignment)
