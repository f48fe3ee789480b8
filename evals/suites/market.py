"""Market: a seeded city day on the real broker and ledger, with every machine deciding through the
subject; its welfare against the hindsight optimum (``market.welfare``) and its utilization.

A case passes when the day's efficiency and utilization reach the case's floors, the market does at
least as well as first-come dispatch and comes within ``max_planner_gap`` of the offline planner on
the same jobs, and no job was awarded twice. The floors are set under what the rule engine reaches
on the same day, so a model that does worse than the rules fails; the report gives the figures to
compare."""

from __future__ import annotations

from pydantic import BaseModel, Field

from agents.llm import ModelConfig
from evals.subjects import Outcome, Subject
from evals.suite import Checks, Env, Suite, check
from market.city import simulate
from market.config import MarketConfig

__all__ = ["MarketCase", "MarketSuite"]


class MarketCase(BaseModel):
    seed: int
    hours: float = Field(default=6.0, gt=0)
    machines: int = Field(default=6, ge=1)
    load: float = Field(default=0.8, gt=0)
    flat_demand: bool = True
    """Demand at ``load`` all day (a morning of the daily shape is nearly empty)."""
    bid_window_s: float = Field(default=1800.0, gt=0)
    """Market seconds to bid, on the virtual clock (the market's, whatever the CPU): half a market
    hour, so a model subject gets about 0.45 real seconds to answer (its latency is charged at 3600x)."""
    min_efficiency: float = Field(ge=0, le=1)
    min_utilization: float = Field(default=0.0, ge=0, le=1)
    max_planner_gap: float = Field(default=0.05, ge=0, le=1)
    """The most the day's efficiency may fall short of the offline planner's (points of the bound)."""


class MarketSuite(Suite[MarketCase]):
    name = "market"
    title = "Market: efficiency against the hindsight optimum and utilization, on seeded days"
    inputs = MarketCase

    def run(self, subject: Subject, case: MarketCase, env: Env) -> Outcome:
        model = ModelConfig(model=subject.name, fast_path=False) if subject.agent is not None else ModelConfig()
        # TAMC's local model needs seconds a bid: its day runs slower, so a call's window is its eval budget
        local = subject.agent is not None and subject.agent.config.local
        speed = case.bid_window_s / subject.bid_budget_s if local else MarketConfig.model_fields["speed"].default
        config = MarketConfig(seed=case.seed, hours=case.hours, machines=case.machines, load=case.load, flat_demand=case.flat_demand,
                              bid_window_s=case.bid_window_s, speed=speed, life=False, memory="off", model=model,
                              data_dir=env.folder / f"market-{case.seed}")
        report = simulate(config, agent=subject.agent)
        m = report.model
        out = Outcome(decision=f"paid {report.paid}/{report.posted}, efficiency {report.efficiency:.3f} "
                               f"(planner {report.planner_efficiency:.3f}, FCFS {report.baseline_efficiency:.3f}), utilization {report.fleet_utilization:.3f}",
                      path=", ".join(f"{k} {v}" for k, v in sorted(report.decisions.items())) or "none",
                      model_calls=m.calls if m else 0, input_tokens=m.input_tokens if m else 0, output_tokens=m.output_tokens if m else 0)
        if m is not None and m.errors:  # why the model's answers were not used: the report's evidence for its fallbacks
            out.decision += "; model answers not used: " + ", ".join(f"{k} {v}" for k, v in sorted(m.errors.items()))
        out.facts.update(efficiency=report.efficiency, utilization=report.fleet_utilization, paid=report.paid, posted=report.posted,
                         baseline_efficiency=report.baseline_efficiency, planner_efficiency=report.planner_efficiency, double_awards=report.double_awards,
                         welfare=report.welfare, optimum_welfare=report.optimum_welfare)
        return out

    def judge(self, case: MarketCase, out: Outcome) -> Checks:
        f = out.facts
        return {
            "efficiency": check(f["efficiency"] >= case.min_efficiency,
                                f"welfare {f['welfare']} of the optimum {f['optimum_welfare']}: {f['efficiency']:.3f} (floor {case.min_efficiency})"),
            "utilization": check(f["utilization"] >= case.min_utilization, f"utilization {f['utilization']:.3f} (floor {case.min_utilization})"),
            "one_award": check(f["double_awards"] == 0, f"{f['double_awards']} jobs awarded twice"),
            "beats_first_come": check(f["efficiency"] >= f["baseline_efficiency"],
                                      f"{f['efficiency']:.3f} against first-come dispatch's {f['baseline_efficiency']:.3f}"),
            "near_planner": check(f["efficiency"] >= f["planner_efficiency"] - case.max_planner_gap,
                                  f"{f['efficiency']:.3f} against the planner's {f['planner_efficiency']:.3f} "
                                  f"(at most {case.max_planner_gap:.2f} behind)"),
        }
