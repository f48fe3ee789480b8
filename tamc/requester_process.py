"""``tamc requester``: a requester as its own process, one that survives being killed.

It posts the jobs of a file and follows each to its end. Its open jobs are in a journal beside the
ledger (``agents.journal``), its broker session is persistent (the broker queues what the machines
say while it is away), and its market clock is anchored in its data folder: killed at any point and
started again with the same arguments, it takes up every job where it stood, posts none twice, and
exits once every job of the file has ended. Each ending is printed as a JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from pathlib import Path

from agents.journal import Journal
from agents.requester import JobOutcome, Requester, RequesterConfig
from core.clock import MarketAnchor, ScaledClock
from core.datadir import DataDir
from core.errors import InputError
from hub.transport import BROKER_PATIENCE_S, SESSION_MAX_AGE_MS, Hub
from ledger import Keystore, Ledger, settlement
from machines.job import JobSpec

__all__ = ["key_name", "run_requester"]


def key_name(name: str) -> str:
    """The requester's key in its data folder's keystore (machines told ``--clock-from`` its did)."""
    return f"requester-{name}"


def run_requester(name: str, broker_url: str, jobs_file: Path, *, ledger_url: str | None, budget: int, data_dir: Path,
                  speed: float, config: RequesterConfig, every_s: float = 0.0, stop: threading.Event | None = None) -> int:
    """Post the file's jobs (those not posted before; one every ``every_s`` market seconds) and follow
    every job to its end; returns how many ended in this run."""
    jobs = _jobs(jobs_file)
    folder = DataDir(data_dir).make()
    ledger = Ledger(ledger_url or folder.ledger_url)
    identity = Keystore(folder.keys).get_or_create(key_name(name))
    wallet = settlement.open_requester(ledger, name, identity.did, budget)
    clock, origin = _clock(folder.root / "requester-clock.json", speed)
    hub = Hub(broker_url, name=key_name(name), clock=clock, session=key_name(name), max_age_ms=SESSION_MAX_AGE_MS)
    journal = Journal(ledger.engine, wallet)
    ended: dict[str, JobOutcome] = {o.job_id: o for o in map(JobOutcome.model_validate_json, journal.ended())}
    finished = threading.Event()
    wanted = {f"{wallet}.{job.id}" for job, _ in jobs}

    def show(outcome: JobOutcome) -> None:
        ended[outcome.job_id] = outcome
        print(json.dumps({"job": outcome.job_id, "outcome": outcome.outcome, "machine": outcome.machine_id,
                          "price": outcome.price, "reason": outcome.reason}), flush=True)
        if wanted <= ended.keys():
            finished.set()

    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    requester = Requester(identity, hub, ledger, wallet, config=config, on_outcome=show, journal=journal)
    hub.connect(BROKER_PATIENCE_S)  # a process (re)started while its broker is down waits for it
    requester.start()
    resumed = threading.Event()
    requester.mailbox.post(resumed.set)  # after the journal's jobs were taken up
    resumed.wait()
    print(json.dumps({"requester": name, "did": identity.did, "wallet": wallet, "state": "online",
                      "resumed": requester.resumed, "ended_before": len(wanted & ended.keys())}), flush=True)
    before = len(ended)
    for n, (job, reserve) in enumerate(jobs):
        if journal.knows(f"{wallet}.{job.id}"):
            continue  # posted before this restart: taken up from the journal, or ended
        # the n-th call is due every_s × n after the first start, not after this one: a restarted
        # requester keeps the schedule (what came due while it was down goes out now)
        requester.post(job, reserve=reserve, value=reserve, after_s=max(0.0, origin + n * every_s - clock.time()))
    if wanted <= ended.keys():
        finished.set()
    try:
        while not finished.wait(0.2) and not stop.is_set():
            pass
    finally:
        requester.stop()
        hub.close()
        ledger.close()
    return len(ended) - before


def _jobs(path: Path) -> list[tuple[JobSpec, int]]:
    """A JSON list of jobs as in ``examples/jobs`` (``max_price`` is the reserve)."""
    try:
        items = json.loads(path.read_text("utf-8"))
        jobs = [JobSpec.model_validate(item) for item in (items if isinstance(items, list) else [items])]
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the jobs in {path}: {exc}") from None
    missing = [j.id for j in jobs if j.max_price is None]
    if missing:
        raise InputError(f"jobs {missing} in {path} have no max_price: the reserve a requester holds in escrow")
    return [(j, int(j.max_price or 0)) for j in jobs]


def _clock(path: Path, speed: float) -> tuple[ScaledClock, float]:
    """The market's clock at ``speed``, anchored in ``path`` on first start, so a restarted
    requester keeps the market's time (its deadlines and the machines following its calls agree),
    and the market time of that first start (its calls' schedule counts from it)."""
    try:
        anchor = MarketAnchor(**json.loads(path.read_text("utf-8")))
        if anchor.speed == speed:
            return ScaledClock.resume(anchor), anchor.market_s
    except (OSError, ValueError, TypeError):
        pass
    clock = ScaledClock(speed)
    anchor = MarketAnchor(market_s=clock.time(), wall_s=time.time(), speed=speed)
    path.write_text(json.dumps(dataclasses.asdict(anchor)), "utf-8")
    return clock, anchor.market_s
