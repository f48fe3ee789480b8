"""Ledger throughput: transfers and revenue splits per second, one writer, then two processes.

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
    print(json.dumps({"bench": "ledger", "backend": book._engine.dialect.name,
                      "transfers_per_s": round(N / transfer_s), "replays_per_s": round(N / replay_s),
                      "splits_per_s": round(N / 2 / split_s), "two_process_transfers_per_s": round(2 * N / two_s)}))
    book.close()
    if schema:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
