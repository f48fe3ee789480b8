"""The long fault campaign: a thousand jobs on separate processes (4 machines, the requester,
mosquitto with persistence, the ledger on a private PostgreSQL) while the broker, machines and the
requester are each SIGKILLed and restarted twenty times, PostgreSQL five times, and the network to
the broker cut five times, on a seeded schedule; then the checker reads the whole history and the
ledger. Prints the run's figures as one JSON object on the last line.

On ``--broker nats-cluster`` a broker kill SIGKILLs one of three NATS nodes (the processes are
spread over them and fail over to the others).

    .venv/bin/python bench/faults.py [--broker mosquitto|nats-cluster] [--jobs 1000] [--kills 20]
                                     [--postgres-restarts 5] [--cuts 5] [--seed 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tamc.campaign import CampaignConfig, run_campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["mosquitto", "nats-cluster"], default="mosquitto")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20, help="kills of each kind: broker, machine, requester")
    parser.add_argument("--postgres-restarts", type=int, default=5, help="0: the ledger is a SQLite file")
    parser.add_argument("--cuts", type=int, default=5, help="network cuts between the processes and the broker")
    parser.add_argument("--machines", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tamc-faults-"))
    config = CampaignConfig(broker=args.broker, jobs=args.jobs, machines=args.machines, seed=args.seed, broker_kills=args.kills,
                            machine_kills=args.kills, requester_kills=args.kills, network_cuts=args.cuts,
                            ledger="postgres" if args.postgres_restarts else "sqlite", postgres_restarts=args.postgres_restarts,
                            timeout_s=3600)
    result = run_campaign(config, out, progress=lambda line: print(line, file=sys.stderr, flush=True))
    v = result.verdict
    for line in v.violations[:50]:
        print(f"violation: {line}", file=sys.stderr)
    print(json.dumps({"broker": args.broker, "ledger": config.ledger, "jobs": v.jobs, "machines": args.machines, "seed": args.seed, "ok": v.ok,
                      "violations": len(v.violations), "endings": v.endings, "faults": v.faults, "seconds": result.seconds,
                      "jobs_per_s": result.jobs_per_s, "history": result.history}))


if __name__ == "__main__":
    main()
