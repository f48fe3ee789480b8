"""The market over a real broker, 5 seeds, at normal demand and at demand above capacity:
simulated machine-days per second, fleet utilization, and welfare against the hindsight optimum
(an LP upper bound, see market/welfare.py) and against first-come-first-served dispatch.

    .venv/bin/python bench/market.py [--quick]

Targets: efficiency >= 95% of the optimum; fleet idle time <= 10% when demand exceeds capacity.
Prints one JSON object per run and a summary as the last line.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub.broker import start_broker
from market.city import MarketConfig, run_market

SEEDS = (1, 2, 3, 4, 5)
SCENARIOS = {"normal": (0.85, False), "overload": (1.5, True)}
"""Name -> (load, flat): a day shaped by nights and peaks, and demand above capacity all day."""


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    hours = 6.0 if "--quick" in sys.argv else 24.0
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SCENARIOS}
    with start_broker() as broker, tempfile.TemporaryDirectory() as tmp:
        for name, (load, flat) in SCENARIOS.items():
            for seed in SEEDS:
                r = run_market(MarketConfig(seed=seed, hours=hours, load=load, flat_demand=flat, broker=broker.url,
                                            data_dir=Path(tmp) / f"{name}-{seed}"))
                row = {"scenario": name, "seed": seed, "load": load, "jobs": r.posted, "paid": r.paid,
                       "efficiency": r.efficiency, "baseline_efficiency": r.baseline_efficiency,
                       "fleet_utilization": r.fleet_utilization, "baseline_utilization": r.baseline_utilization,
                       "machine_days_per_s": r.machine_days_per_s, "wall_s": r.wall_s, "double_awards": r.double_awards}
                print(json.dumps(row), flush=True)
                runs[name].append(row)

    def mean(name: str, key: str) -> float:
        return round(statistics.fmean(r[key] for r in runs[name]), 4)

    summary = {
        "bench": "market", "broker": broker.kind, "hours": hours, "seeds": len(SEEDS),
        **{f"{name}_{key}": mean(name, key) for name in SCENARIOS
           for key in ("efficiency", "baseline_efficiency", "fleet_utilization", "baseline_utilization", "machine_days_per_s")},
        "overload_idle": round(1 - mean("overload", "fleet_utilization"), 4),
        "targets": {"efficiency_min": 0.95, "idle_max_when_overloaded": 0.10},
    }
    summary["met_efficiency"] = summary["normal_efficiency"] >= 0.95
    summary["met_idle"] = summary["overload_idle"] <= 0.10
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
