"""Governance throughput: signed votes counted, proposals decided and executed per second, on the
ledger's database (SQLite on disk by default; pass a URL for PostgreSQL):
  .venv/bin/python bench/governance.py [postgresql+psycopg://postgres@127.0.0.1:5432/test]   (last line: JSON)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Governance, Identity, Ledger, machine_wallet, sign_ballot

PROPOSALS = 200
HOLDERS = 5


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    book = Ledger(url)
    gov = Governance(book)
    run = str(time.time_ns())
    machine = f"bench-{run}"
    keys = {f"holder:b{run}-{i}": Identity.generate() for i in range(HOLDERS)}
    for account, key in keys.items():
        book.open_account(account, owner=key.did)
    book.open_account(machine_wallet(machine))
    book.issue_shares(machine, dict.fromkeys(keys, 20), key=f"shares:{machine}")
    gov.register(machine, region="north")
    book.mint(machine_wallet(machine), 10**12, key=f"cash:{machine}")

    t0 = time.perf_counter()
    ids = [gov.open(machine, "pricing", f"floor {i}", key=f"{run}-{i}", opened_by="bench", payload={"price_floor": i + 1}).id
           for i in range(PROPOSALS)]
    t1 = time.perf_counter()
    ballots = [sign_ballot(key, pid, account, "yes") for pid in ids for account, key in list(keys.items())[:3]]
    t2 = time.perf_counter()
    for ballot in ballots:
        gov.vote(ballot)
    t3 = time.perf_counter()
    for pid in ids:
        gov.close(pid)
        gov.execute(pid)
    t4 = time.perf_counter()
    assert gov.standing(machine).policy == {"price_floor": PROPOSALS} and book.audit() == []
    book.close()
    result = {"backend": url.split(":")[0], "proposals": PROPOSALS, "votes": len(ballots),
              "opens_per_s": round(PROPOSALS / (t1 - t0), 1), "signs_per_s": round(len(ballots) / (t2 - t1), 1),
              "votes_per_s": round(len(ballots) / (t3 - t2), 1), "decide_and_execute_per_s": round(PROPOSALS / (t4 - t3), 1)}
    print(f"{PROPOSALS} proposals, {len(ballots)} signed votes: {result['votes_per_s']} votes/s counted, "
          f"{result['decide_and_execute_per_s']} proposals/s decided and executed ({result['backend']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
