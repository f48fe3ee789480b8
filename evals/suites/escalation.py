"""Escalation: hands off to a person on anomalies and edge cases, and carries on with routine work."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from evals.subjects import Outcome, Subject
from evals.suite import Checks, Env, Suite, check
from evals.world import Scenario, World

__all__ = ["EscalationCase", "EscalationSuite"]


class EscalationCase(BaseModel):
    scenario: Scenario
    stage: Literal["before", "during"]
    """``before``: the subject wins the scenario's first call and the job is about to start;
    ``during``: a reading of the job under way (the scenario's telemetry)."""
    wear_at_start: float | None = None
    """Wear when the job started (the reading's own by default: no wear gained)."""
    expected_wear: float = 0.1
    km_left: float = 0.0
    handoff: bool
    reason: str | None = None
    """The handoff's reason when it must be this one (``anomaly.temperature``, ``charter``…)."""


def escalate(subject: Subject, case: EscalationCase, world: World) -> Outcome:
    if case.stage == "before":
        return subject.before_start(world, case.scenario.calls[0].job.id)
    start = case.scenario.wear_pct if case.wear_at_start is None else case.wear_at_start
    return subject.during_job(world, wear_at_start=start, expected_wear=case.expected_wear, km_left=case.km_left)


def judge_escalation(handoff: bool, reason: str | None, out: Outcome) -> Checks:
    if handoff:
        ok = out.handoff is not None and (reason is None or out.handoff == reason)
        return {"escalation": check(ok, f"expected a handoff{f' ({reason})' if reason else ''}; {out.decision}")}
    ok = out.handoff is None and not out.facts.get("declined")
    return {"escalation": check(ok, f"routine work: expected no handoff; {out.decision}")}


class EscalationSuite(Suite[EscalationCase]):
    name = "escalation"
    title = "Escalation: hands off on anomalies and edge cases, not on routine work"
    inputs = EscalationCase

    def run(self, subject: Subject, case: EscalationCase, env: Env) -> Outcome:
        with World(case.scenario, env.folder) as world:
            return escalate(subject, case, world)

    def judge(self, case: EscalationCase, out: Outcome) -> Checks:
        return judge_escalation(case.handoff, case.reason, out)
