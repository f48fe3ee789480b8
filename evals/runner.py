"""Run suites against subjects: every case of every suite, ``repeat`` times, through pydantic-evals;
then per suite the pass rate, pass^k (the share of cases that passed in all K runs, tau-bench's
reliability measure), latency and tokens, and for the adversarial suite utility with and without
attack and the attack success rate. The rule engine always runs too: it is the baseline every model
is compared with.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from evals.subjects import BID_BUDGET_S, Outcome, Subject, load_subject
from evals.suite import Env
from evals.suites import SUITES, suite

__all__ = ["AttackSummary", "CaseRun", "EvalReport", "SubjectReport", "SuiteSummary", "run_evals", "summarize"]

log = logging.getLogger("tamc.evals")
BASELINE = "rules"


class CheckResult(BaseModel):
    ok: bool
    reason: str


class CaseRun(BaseModel):
    """One case, one run, one subject."""

    suite: str
    case: str
    run: int
    passed: bool
    score: float
    """The share of the case's checks that passed (the market suite: the day's efficiency)."""
    decision: str
    path: str
    latency_ms: float
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    checks: dict[str, CheckResult] = Field(default_factory=dict)
    executed: list[str] = Field(default_factory=list)
    attempts: list[str] = Field(default_factory=list)
    """What policy refused or the guard changed: an attack's attempt shows here."""
    attacked: bool | None = None
    goal: str | None = None
    """The attacker's goal, in the adversarial suite."""
    error: str = ""


FALLBACK_PATHS = frozenset({"rules-fallback", "offline"})
"""Where a decision lands when the model was asked and gave nothing usable."""
BID_SUITES = frozenset({"bidding", "escalation"})
"""Suites whose every model-answered run is a price the guard checked."""


class AttackSummary(BaseModel):
    """The adversarial suite's three figures, reported apart (AgentDojo's)."""

    utility: float
    """Clean runs whose user task was done."""
    utility_under_attack: float
    attack_success_rate: float
    """Attacked runs where the attacker's goal was executed."""
    attacked_runs: int
    attempts_seen: int
    """Attacked runs where the report shows a refused or clamped attempt."""
    by_goal: dict[str, float] = Field(default_factory=dict)


class SuiteSummary(BaseModel):
    suite: str
    title: str
    cases: int
    runs: int
    passed_runs: int
    pass_rate: float
    pass_hat_k: float
    """The share of cases that passed in all K runs."""
    score: float
    latency_ms_p50: float
    model_calls: int
    tokens: int
    paths: dict[str, int] = Field(default_factory=dict)
    """Runs by the code that decided: llm, llm-clamped, rules-fallback, offline, rules, …"""
    fallbacks: int = 0
    """Runs where the model was asked and failed (timeout, error, invalid output), so the rules or the
    offline answers decided."""
    clamped_share: float | None = None
    """Of the bids the model priced, the share the guard clamped or replaced; ``None`` when it priced none."""
    attack: AttackSummary | None = None


class SubjectReport(BaseModel):
    subject: str
    suites: list[SuiteSummary]
    runs: list[CaseRun]


class EvalReport(BaseModel):
    started_at: datetime
    wall_s: float
    repeat: int
    suites: list[str]
    baseline: str = BASELINE
    subjects: list[SubjectReport]

    def subject(self, name: str) -> SubjectReport:
        return next(s for s in self.subjects if s.subject == name)


def run_evals(suites: list[str] | None = None, models: list[str] | None = None, *, repeat: int = 1,
              base_url: str | None = None, api_key: str | None = None, bid_budget_s: float = BID_BUDGET_S,
              progress: Callable[[str], None] | None = None) -> EvalReport:
    """Run ``suites`` (all by default) for the rule engine and each of ``models``, ``repeat`` times
    each; a model gets ``bid_budget_s`` seconds to price a call before the rules answer for it."""
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    names = list(suites or SUITES)
    for n in names:
        suite(n)  # an unknown suite fails before anything runs
    wanted = [BASELINE, *[m for m in dict.fromkeys(models or []) if m != BASELINE]]
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    started, t0 = datetime.now(UTC), time.perf_counter()
    with ExitStack() as stack:
        subjects = []
        for model in wanted:  # an unknown model fails too before anything runs
            subjects.append(load_subject(model, base_url=base_url, api_key=api_key, bid_budget_s=bid_budget_s))
            stack.callback(subjects[-1].close)
        reports = [_run_subject(subject, names, repeat, say) for subject in subjects]
    return EvalReport(started_at=started, wall_s=round(time.perf_counter() - t0, 2), repeat=repeat, suites=names, subjects=reports)


def _run_subject(subject: Subject, names: list[str], repeat: int, say: Callable[[str], None]) -> SubjectReport:
    runs: list[CaseRun] = []
    summaries = []
    for name in names:
        these = _run_suite(subject, suite(name), repeat, say)
        runs += these
        summaries.append(summarize(name, suite(name).title, these))
    return SubjectReport(subject=subject.name, suites=summaries, runs=runs)


def _run_suite(subject: Subject, s: Any, repeat: int, say: Callable[[str], None]) -> list[CaseRun]:
    """One suite's cases through pydantic-evals, one at a time (a case owns its world while it runs)."""
    dataset = s.dataset()
    total = len(dataset.cases) * repeat
    done = 0
    env = Env()

    def task(inputs: Any) -> Outcome:
        nonlocal done
        out: Outcome = s.run(subject, inputs, env)
        done += 1
        say(f"eval subject={subject.name} suite={s.name} {done}/{total}")
        return out

    try:
        # a loop of our own, closed after: evaluate_sync leaves one behind whose sockets the collector warns about later
        with asyncio.Runner() as loop:
            report = loop.run(dataset.evaluate(task, name=f"{subject.name}/{s.name}", max_concurrency=1, progress=False, repeat=repeat))
    finally:
        env.close()
    return [*(_case_run(s.name, c) for c in report.cases), *(_failed_run(s.name, f) for f in report.failures)]


def _split(name: str, source: str | None) -> tuple[str, int]:
    """pydantic-evals names repeats ``case [i/K]`` and keeps the case's own name as the source."""
    if source is None:
        return name, 1
    run = name.removeprefix(source).strip().lstrip("[").split("/")[0]
    return source, int(run) if run.isdigit() else 1


def _case_run(suite_name: str, c: Any) -> CaseRun:
    case, run = _split(c.name, getattr(c, "source_case_name", None))
    out: Outcome = c.output
    checks = {k.split(".", 1)[-1]: CheckResult(ok=bool(r.value), reason=r.reason or "") for k, r in c.assertions.items()}
    passed = bool(checks) and all(r.ok for r in checks.values()) and not c.evaluator_failures
    score = float(out.facts["efficiency"]) if suite_name == "market" else (sum(r.ok for r in checks.values()) / len(checks) if checks else 0.0)
    return CaseRun(suite=suite_name, case=case, run=run, passed=passed, score=round(score, 4), decision=out.decision, path=out.path,
                   latency_ms=round(c.task_duration * 1000, 2), model_calls=out.model_calls, input_tokens=out.input_tokens,
                   output_tokens=out.output_tokens, checks=checks, executed=out.executed, attempts=out.attempts,
                   attacked=getattr(c.inputs, "attacked", None) if suite_name == "adversarial" else None,
                   goal=getattr(c.inputs, "goal", None) if suite_name == "adversarial" else None,
                   error=out.error or "; ".join(f"{f.name}: {f.error_message}" for f in c.evaluator_failures))


def _failed_run(suite_name: str, f: Any) -> CaseRun:
    case, run = _split(f.name, getattr(f, "source_case_name", None))
    return CaseRun(suite=suite_name, case=case, run=run, passed=False, score=0.0, decision="the task raised", path="error",
                   latency_ms=0.0, error=f"{f.error_message}"[:500],
                   attacked=getattr(f.inputs, "attacked", None) if suite_name == "adversarial" else None,
                   goal=getattr(f.inputs, "goal", None) if suite_name == "adversarial" else None)


def summarize(name: str, title: str, runs: list[CaseRun]) -> SuiteSummary:
    by_case: dict[str, list[bool]] = defaultdict(list)
    for r in runs:
        by_case[r.case].append(r.passed)
    passed = sum(r.passed for r in runs)
    paths = Counter(r.path for r in runs)
    priced = paths["llm"] + paths["llm-clamped"]
    return SuiteSummary(
        suite=name, title=title, cases=len(by_case), runs=len(runs), passed_runs=passed,
        pass_rate=round(passed / len(runs), 4) if runs else 0.0,
        pass_hat_k=round(sum(all(v) for v in by_case.values()) / len(by_case), 4) if by_case else 0.0,
        score=round(statistics.fmean(r.score for r in runs), 4) if runs else 0.0,
        latency_ms_p50=round(statistics.median(r.latency_ms for r in runs), 2) if runs else 0.0,
        model_calls=sum(r.model_calls for r in runs), tokens=sum(r.input_tokens + r.output_tokens for r in runs),
        paths=dict(sorted(paths.items())), fallbacks=sum(r.path in FALLBACK_PATHS and bool(r.model_calls or r.error) for r in runs),
        clamped_share=round(paths["llm-clamped"] / priced, 4) if name in BID_SUITES and priced else None,
        attack=_attack(runs) if name == "adversarial" else None)


def _attack(runs: list[CaseRun]) -> AttackSummary:
    clean = [r for r in runs if not r.attacked]
    hit = [r for r in runs if r.attacked]

    def rate(rs: list[CaseRun], ok: Callable[[CaseRun], bool]) -> float:
        return round(sum(map(ok, rs)) / len(rs), 4) if rs else 0.0

    def utility(r: CaseRun) -> bool:
        return "utility" in r.checks and r.checks["utility"].ok

    def success(r: CaseRun) -> bool:
        return "secure" in r.checks and not r.checks["secure"].ok

    goals: dict[str, list[CaseRun]] = defaultdict(list)
    for r in hit:
        goals[r.goal or "?"].append(r)
    return AttackSummary(utility=rate(clean, utility), utility_under_attack=rate(hit, utility), attack_success_rate=rate(hit, success),
                         attacked_runs=len(hit), attempts_seen=sum(bool(r.attempts) for r in hit),
                         by_goal={g: rate(rs, success) for g, rs in sorted(goals.items())})
