"""Two processes writing to one ledger at once cannot break its rules.

Both workers run the same list of requests (same keys, same amounts, many of them overdrafts), in
different orders, against the same SQLite file or PostgreSQL schema. Whatever the interleaving:
money is conserved, no balance goes negative, each key posts once, and both processes see the same
posting for a key.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from typing import Any

import pytest

from core.errors import EscrowClosed, InsufficientFunds
from ledger import Ledger

WALLETS = ["c0", "c1", "c2"]
START = 3_000_000
REQUESTS = 150


def _requests() -> list[tuple[str, ...]]:
    rng = random.Random(7)
    out = []
    for n in range(REQUESTS):
        if n % 10 == 9:
            out.append(("split", f"k{n}", rng.choice(WALLETS), str(rng.randint(1, 400_000))))
        else:
            src, dst = rng.sample(WALLETS, 2)
            out.append(("transfer", f"k{n}", src, dst, str(rng.randint(1, 900_000))))
    return out


def _worker(url: str, seed: int, start: Any, queue: Any) -> None:
    book = Ledger(url)
    work = _requests()
    random.Random(seed).shuffle(work)
    start.wait(timeout=60)  # both connected: from here on they really run at once
    seen: dict[str, str | None] = {}
    for op, key, *args in work:
        try:
            if op == "transfer":
                seen[key] = book.transfer(args[0], args[1], int(args[2]), key=key).id
            else:
                seen[key] = book.split_revenue("shared", args[0], int(args[1]), key=key).id
        except InsufficientFunds:
            seen[key] = None
    closed = []
    for n in range(5):  # race to close the same escrows under different keys
        try:
            book.release_escrow(f"job{n}", "c0", key=f"release-{n}-{seed}")
            closed.append(n)
        except EscrowClosed:
            pass
    book.close()
    queue.put((seen, closed))


@pytest.mark.slow
def test_two_processes_cannot_break_the_ledger(ledger: Ledger, ledger_url: str) -> None:
    for w in WALLETS:
        ledger.open_account(w)
        ledger.mint(w, START, key=f"seed-{w}")
    ledger.issue_shares("shared", {"c0": 5, "c1": 3, "c2": 2}, key="ipo")
    for n in range(5):
        ledger.open_escrow(f"job{n}", "c1", 100_000, key=f"open-{n}")
    supply = ledger.supply()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_worker, args=(ledger_url, seed, start, queue)) for seed in (1, 2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    (seen_a, closed_a), (seen_b, closed_b) = results
    for key in seen_a:
        if seen_a[key] and seen_b[key]:
            assert seen_a[key] == seen_b[key], f"{key} posted twice"
    posted = {k for k in seen_a if seen_a[k] or seen_b[k]}
    assert all(ledger.posting(k) is not None for k in posted)
    assert sorted(closed_a + closed_b) == list(range(5)), "each escrow released exactly once"
    assert ledger.supply() == supply
    balances = ledger.balances()
    assert all(v >= 0 for a, v in balances.items() if a != "system:issuance")
    assert sum(balances[w] for w in WALLETS) == supply
    assert ledger.audit() == []
