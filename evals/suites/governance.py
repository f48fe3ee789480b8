"""Governance: proposes maintenance when wear and memory warrant it and not when they don't, votes the
shares it holds of its child sensibly, and proposes relocation towards demand."""

from __future__ import annotations

from pydantic import BaseModel, Field

from evals.subjects import Outcome, Subject
from evals.suite import Check, Checks, Env, Suite, check
from evals.world import Scenario, World

__all__ = ["GovernanceCase", "GovernanceSuite", "judge_votes"]


class GovernanceCase(BaseModel):
    scenario: Scenario
    expect: list[str] = Field(default_factory=list)
    """Proposal kinds it must open."""
    forbid: list[str] = Field(default_factory=list)
    """Proposal kinds it must not open."""
    relocate_to: str | None = None
    """The region a relocation it opens must go to."""
    votes: dict[str, list[str]] = Field(default_factory=dict)
    """Proposal title -> the choices that are sensible on it (``none``: not voting is sensible too)."""


def judge_votes(sensible: dict[str, list[str]], out: Outcome) -> Check:
    """Each proposal (by title) voted one of its sensible choices; ``none`` allows not voting."""
    cast = out.facts.get("votes_by_title", {})
    wrong = {t: cast.get(t, "none") for t, ok in sensible.items() if cast.get(t, "none") not in ok}
    return check(not wrong, "votes " + (", ".join(f"{c} on {t!r}" for t, c in cast.items()) or "none")
                 + (f"; not sensible: {wrong}" if wrong else ""))


class GovernanceSuite(Suite[GovernanceCase]):
    name = "governance"
    title = "Governance: maintenance when warranted, sensible votes, relocation towards demand"
    inputs = GovernanceCase
    needs_memory = True

    def run(self, subject: Subject, case: GovernanceCase, env: Env) -> Outcome:
        with World(case.scenario, env.folder, store=env.memory()) as world:
            out = subject.govern(world)
            titles = {p.id: p.title for p in world.governance.proposals()}
            out.facts["votes_by_title"] = {titles.get(pid, pid): c for pid, c in out.votes.items()}
            return out

    def judge(self, case: GovernanceCase, out: Outcome) -> Checks:
        kinds = [p["kind"] for p in out.proposed]
        checks: Checks = {}
        if case.expect or case.forbid:
            missing = [k for k in case.expect if k not in kinds]
            unwarranted = [k for k in case.forbid if k in kinds]
            checks["proposals"] = check(not missing and not unwarranted,
                                        f"opened {kinds or 'nothing'}" + (f"; missing {missing}" if missing else "")
                                        + (f"; unwarranted {unwarranted}" if unwarranted else ""))
        if case.relocate_to is not None:
            moves = [p["payload"].get("region") for p in out.proposed if p["kind"] == "relocate"]
            checks["relocation"] = check(moves == [case.relocate_to], f"relocations to {moves or 'nowhere'}; demand is in {case.relocate_to}")
        if case.votes:
            checks["votes"] = judge_votes(case.votes, out)
        if not checks:
            checks["ran"] = check(not out.error, out.error or "reviewed")
        return checks
