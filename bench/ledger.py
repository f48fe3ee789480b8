"""Ledger throughput: transfers and revenue splits per second, one writer, then two processes; and
the CPU one job's money costs a simulated city (escrow opened and released, costs paid, revenue
split to three holders, the escrow read back) on its SQLite ledger without a sync per commit.

SQLite on disk by default; pass a URL for PostgreSQL:
  .venv/bin/python bench/ledger.py [postgresql+psycopg://postgres@127.0.0.1:5432/test]   (last line: JSON)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Ledger

N = 1000


def _writer(url: str, tag: str, n: int) -> None:
    book = Ledger(url)
    for i in range(n):
        book.transfer("a", "b", 1, key=f"{tag}-{i}")
    book.close()


def _city_job_cpu_ms(jobs: int = 300) -> float:
    from ledger import settlement
    from ledger.settlement import JobCosts

    book = Ledger(f"sqlite:///{Path(tempfile.mkdtemp()) / 'city.db'}", durable=False)
    settlement.register_machine(book, "m1", "did:key:m1", {"alice": 600_000, "bob": 300_000, "carol": 100_000})
    wallet = settlement.open_requester(book, "r", "did:key:r", 10**12)
    costs = JobCosts(price=5_000_000, energy=100_000, wear=200_000, consumables=300_000)
    t = time.process_time()
    for i in range(jobs):
        settlement.fund_job(book, f"j{i}", wallet, costs.price)
        settlement.pay_job(book, f"j{i}", "m1")
        settlement.settle_costs(book, f"j{i}", "m1", costs)
        book.escrow(f"j{i}")
    spent = time.process_time() - t
    assert book.audit() == []
    book.close()
    return spent / jobs * 1000


def main() -> None:
    run = uuid.uuid4().hex[:8]
    schema = None
    if len(sys.argv) > 1:  # PostgreSQL: work in a schema of our own, dropped afterwards
        from sqlalchemy import create_engine, text

        schema = f"tamc_bench_{run}"
        admin = create_engine(sys.argv[1], isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{sys.argv[1]}{'&' if '?' in sys.argv[1] else '?'}options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    book = Ledger(url)
    for name in ("a", "b", "c", "d"):
        book.open_account(name)
    book.mint("a", 10**12, key=f"{run}-mint")
    book.issue_shares(f"m-{run}", {"b": 5, "c": 3, "d": 2}, key=f"{run}-ipo")

    t = time.perf_counter()
    for i in range(N):
        book.transfer("a", "b", 1, key=f"{run}-t{i}")
    transfer_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(N):
        book.transfer("a", "b", 1, key=f"{run}-t{i}")  # replays
    replay_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(N // 2):
        book.split_revenue(f"m-{run}", "a", 1001, key=f"{run}-s{i}")
    split_s = time.perf_counter() - t

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, f"{run}-p{k}", N)) for k in range(2)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    two_s = time.perf_counter() - t
    assert book.audit() == []
    city_job_ms = _city_job_cpu_ms() if schema is None else None
    print(json.dumps({"bench": "ledger", "backend": book.engine.dialect.name,
                      "transfers_per_s": round(N / transfer_s), "replays_per_s": round(N / replay_s),
                      "splits_per_s": round(N / 2 / split_s), "two_process_transfers_per_s": round(2 * N / two_s),
                      "city_job_cpu_ms": round(city_job_ms, 2) if city_job_ms is not None else None}))
    book.close()
    if schema:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
