"""Rule-engine latency: one decision per example job, many times. Target: well under 1 ms.

Run: .venv/bin/python bench/rules.py   (last line: JSON)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machines import load_job, load_profiles
from pricing.rules import MachineStatus, MarketContext, decide

PAIRS = [("prusa-01", "print-bracket"), ("shapeoko-01", "mill-plate"), ("glowforge-01", "cut-sign"),
         ("taxi-01", "ride-station"), ("drone-01", "drone-parcel"), ("bambu-02", "print-bracket")]


def main(rounds: int = 5000) -> None:
    profiles = load_profiles()
    jobs = Path(__file__).resolve().parents[1] / "examples" / "jobs"
    cases = [(profiles[m], load_job(jobs / f"{j}.json")) for m, j in PAIRS]
    status, market = MachineStatus(queue_len=1, queue_hours=0.5), MarketContext(demand_index_bps=12_000)
    samples = []
    for _ in range(rounds):
        for profile, job in cases:
            t = time.perf_counter_ns()
            decide(profile, job, status, market)
            samples.append(time.perf_counter_ns() - t)
    samples.sort()
    us = lambda q: samples[int(q * (len(samples) - 1))] / 1000  # noqa: E731
    print(json.dumps({"bench": "rules.decide", "decisions": len(samples), "p50_us": round(us(0.5), 1),
                      "p99_us": round(us(0.99), 1), "mean_us": round(statistics.fmean(samples) / 1000, 1),
                      "target_us": 1000}))


if __name__ == "__main__":
    main()
