"""Scale: a thousand machine identities in several processes on one broker, the ledger on PostgreSQL.

Each machine is a ``MachineNode`` with its own key, broker user and connection (the broker's ACL holds
per identity) and the ledger behind it; ``--procs`` worker processes host them (as many per process
as fit: a node is a connection, a paho thread and its state; the shared per-process mailbox runs
their work). The machines serve ``--regions`` regions, so a call reaches the machines of one region.
A requester in this process posts ``--jobs`` jobs, ``--inflight`` at a time, round the regions, and
follows each to its end (funded in escrow, paid on done). Every process keeps the requester's
market time (its calls carry it). Brokers: ``mosquitto`` (one) and ``cluster`` (three NATS nodes,
the machines spread over them, the requester on the first); the ledger on a private PostgreSQL.

Reports jobs per second, CFP→accept p50/p99 (real ms) and memory per machine (the workers' RSS
once their machines are up, less what an empty worker holds, over the machines). One JSON object
per broker, then a summary as the last line.

    .venv/bin/python bench/scale.py [--machines 1000] [--procs 4] [--jobs 400] [--inflight 16] [--brokers mosquitto,cluster]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEED = 360_000.0
"""Market seconds per real second: a one-hour print takes 10 ms, a bid window of an hour 10 ms."""


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec_path: str) -> None:
    """Host the machines of the spec; say ``ready`` with the memory, then wait for stdin to close."""
    from agents.node import MachineNode
    from core.clock import MarketAnchor, ScaledClock
    from core.mailbox import Mailbox
    from hub.transport import Hub
    from ledger import Identity, Ledger, settlement
    from machines import load_profiles

    spec = json.loads(Path(spec_path).read_text())
    empty_mb = _rss_mb()
    ledger = Ledger(spec["ledger"])
    base = load_profiles()["prusa-01"]
    clock = ScaledClock.resume(MarketAnchor(**spec["anchor"]))  # the requester's market time, in this process
    mailbox = Mailbox("nodes", clock=clock)
    nodes, hubs = [], []
    for i, m in enumerate(spec["machines"]):
        policy = base.policy.model_copy(update={"margin_bps": 2000 + (i % 50) * 10, "max_queue": 10_000, "territory": ()})
        profile = base.model_copy(update={"id": m["id"], "region": m["region"], "policy": policy})
        identity = Identity.generate()
        settlement.register_machine(ledger, profile.id, identity.did, {"owner": 1})
        hub = Hub(m["url"], name=profile.id, clock=clock, timekeepers=[spec["timekeeper"]])
        hubs.append(hub)
        nodes.append(MachineNode(profile, identity, hub, ledger=ledger, mailbox=mailbox, progress_steps=1).start())
    print(json.dumps({"ready": len(nodes), "empty_mb": round(empty_mb, 1), "rss_mb": round(_rss_mb(), 1),
                      "threads": threading.active_count()}), flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    said = {"rss_mb": round(_rss_mb(), 1), "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "paid": sum(n.stats.paid for n in nodes)}
    for node in nodes:
        node.stop()
    for hub in hubs:
        hub.close()
    ledger.close()
    print(json.dumps(said), flush=True)


@contextlib.contextmanager
def _broker(kind: str, home: Path) -> Iterator[Any]:
    if kind == "mosquitto":
        from hub.broker import BrokerHome, start_broker

        with start_broker("mosquitto", home=BrokerHome(home)) as broker:
            yield broker
    else:
        from hub.cluster import NatsCluster

        with NatsCluster(home) as cluster:
            yield cluster


def run(kind: str, machines: int, procs: int, jobs: int, inflight: int, regions: int) -> dict[str, Any]:
    from agents.requester import JobOutcome, Requester, RequesterConfig
    from core.clock import ScaledClock
    from hub.transport import Hub
    from ledger import Identity, Ledger, settlement
    from machines import JobSpec
    from tamc.postgres import PrivatePostgres

    folder = Path(tempfile.mkdtemp(prefix=f"tamc-scale-{kind}-"))
    ids = [f"s{i:04d}" for i in range(machines)]
    with PrivatePostgres() as pg, _broker(kind, folder / "broker") as broker:
        rid = Identity.generate()
        t_admit = time.perf_counter()
        urls = broker.admit_all([(m, "machine") for m in ids] + [("scale-requester", "requester")])
        admit_s = time.perf_counter() - t_admit
        ledger = Ledger(pg.url)
        wallet = settlement.open_requester(ledger, "scale", rid.did, 10**15)
        clock = ScaledClock(SPEED)
        anchor = dataclasses.asdict(clock.anchor())
        workers = []
        t_up = time.perf_counter()
        for p in range(procs):
            mine = [{"id": m, "url": urls[m], "region": f"r{i % regions}"} for i, m in enumerate(ids) if i % procs == p]
            spec = folder / f"worker-{p}.json"
            spec.write_text(json.dumps({"ledger": pg.url, "timekeeper": rid.did, "anchor": anchor, "machines": mine}))
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker", str(spec)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]))
        ready = []
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if not line:
                raise SystemExit(f"a worker died starting its machines (exit {w.wait()})")
            ready.append(json.loads(line))
        up_s = time.perf_counter() - t_up
        print(f"scale[{kind}]: {machines} machines up in {up_s:.1f} s across {procs} processes", file=sys.stderr, flush=True)

        hub = Hub(urls["scale-requester"], name="scale-requester", clock=clock).connect()
        done = threading.Event()
        outcomes: list[JobOutcome] = []
        lock = threading.Lock()
        posted = [0]
        requester: Requester

        def post_next() -> None:
            i = posted[0]
            posted[0] += 1
            job = JobSpec(id=f"j{i:05d}", kind="printer_3d", capability="print", region=f"r{i % regions}", deadline_h=2_000,
                          material="PLA", size_mm=(10, 10, 10), amount=1)
            requester.post(job, reserve=10**9, value=2 * 10**9)

        def on_outcome(o: JobOutcome) -> None:
            with lock:
                outcomes.append(o)
                if posted[0] < jobs:
                    post_next()
                if len(outcomes) == jobs:
                    done.set()
                if len(outcomes) % 100 == 0:
                    print(f"scale[{kind}]: {len(outcomes)}/{jobs} jobs ended", file=sys.stderr, flush=True)

        requester = Requester(rid, hub, ledger, wallet, on_outcome=on_outcome,
                              config=RequesterConfig(bid_window_s=SPEED * 2.0, accept_window_s=SPEED * 5.0)).start()
        time.sleep(3.0)  # every machine's retained presence reaches the requester: it closes bidding once a region has bid
        t0 = time.perf_counter()
        with lock:
            for _ in range(min(inflight, jobs)):
                post_next()
        finished = done.wait(1800)
        wall = time.perf_counter() - t0
        requester.stop()
        hub.close()
        ends = []
        for w in workers:
            assert w.stdin is not None and w.stdout is not None
            w.stdin.close()
            ends.append(json.loads(w.stdout.readline() or "{}"))
            w.wait(60)
        audit = ledger.audit()
        ledger.close()
    lat = sorted((o.accept_latency_ms or 0.0) / SPEED for o in outcomes if o.accept_latency_ms is not None)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    rss = sum(r["rss_mb"] for r in ready)
    empty = sum(r["empty_mb"] for r in ready)
    return {
        "broker": kind, "machines": machines, "processes": procs, "regions": regions, "jobs": len(outcomes), "inflight": inflight,
        "finished": finished, "outcomes": counts, "jobs_per_s": round(len(outcomes) / wall, 2),
        "accept_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
        "accept_p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
        "admit_s": round(admit_s, 1), "machines_up_s": round(up_s, 1),
        "rss_mb_total": round(rss, 1), "rss_mb_per_machine": round(rss / machines, 2),
        "rss_mb_per_machine_marginal": round((rss - empty) / machines, 2),
        "worker_peak_mb": max(e.get("peak_mb", 0) for e in ends), "threads_per_worker": max(r["threads"] for r in ready),
        "audit_clean": not audit,
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--regions", type=int, default=50)
    parser.add_argument("--brokers", default="mosquitto,cluster")
    args = parser.parse_args()
    results = []
    for kind in args.brokers.split(","):
        result = run(kind, args.machines, args.procs, args.jobs, args.inflight, args.regions)
        print(json.dumps(result), flush=True)
        results.append(result)
    print(json.dumps({"bench": "scale", "cpus": os.cpu_count(), "results": {r["broker"]: r for r in results}}))


if __name__ == "__main__":
    main()
