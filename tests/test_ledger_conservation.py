"""Random sequences of transfers, escrows, splits and retries never create or lose a micro-unit.

A hypothesis state machine drives the real ledger (SQLite and PostgreSQL) beside a plain-Python
model of the balances. After every step: the ledger's balances equal the model's, the sum over
accounts equals what was minted less what was burnt, no account is below zero, and each
idempotency key has exactly one posting. CI runs 1,000 sequences per backend.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from core.errors import EscrowClosed, EscrowExists, EscrowNotFound, IdempotencyConflict, InsufficientFunds
from ledger import ISSUANCE, AccountKind, Ledger, split_pro_rata
from ledger._db import metadata, postings

EXAMPLES = int(os.environ.get("TAMC_LEDGER_SEQUENCES") or (1000 if os.environ.get("CI") else 150))
WALLETS = ["w0", "w1", "w2", "w3"]
MACHINE = "mach"
amounts = st.integers(min_value=1, max_value=5_000_000)
wallet = st.sampled_from(WALLETS)
job = st.sampled_from(["j0", "j1", "j2"])
keys = st.integers(min_value=0, max_value=40).map(lambda n: f"k{n}")  # small pool: keys collide often


def _reset(book: Ledger) -> None:
    with book._engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    book.open_account(ISSUANCE, kind=AccountKind.SYSTEM)


class LedgerModel(RuleBasedStateMachine):
    book: Ledger

    def __init__(self) -> None:
        super().__init__()
        _reset(self.book)
        self.bal = dict.fromkeys(WALLETS, 0)
        self.escrow: dict[str, tuple[str, int, str]] = {}  # job -> (payer, amount, state)
        self.shares: dict[str, int] = {}
        self.minted = 0
        self.done: dict[str, tuple[tuple[Any, ...], str]] = {}  # key -> (request, posting id)

    @initialize()
    def open_wallets(self) -> None:
        for w in WALLETS:
            self.book.open_account(w)

    def _attempt(self, request: tuple[Any, ...], key: str, call: Any, apply: Any) -> None:
        """Make a call, and check it against what the key already did."""
        if key in self.done:
            first_request, first_id = self.done[key]
            if first_request == request:
                assert call().id == first_id  # a retry: same result, nothing moves
            else:
                try:
                    call()
                except IdempotencyConflict:
                    return
                raise AssertionError(f"key {key} reused for {request} after {first_request} was accepted")
            return
        try:
            posting = call()
        except (InsufficientFunds, EscrowClosed, EscrowExists, EscrowNotFound) as exc:
            assert apply(dry=True) is False, f"ledger refused {request} but the model allows it: {exc}"
            return
        assert not posting.replayed
        assert apply(dry=False) is not False, f"ledger accepted {request} but the model refuses it"
        self.done[key] = (request, posting.id)

    @rule(to=wallet, amount=amounts, key=keys)
    def mint(self, to: str, amount: int, key: str) -> None:
        def apply(dry: bool) -> bool:
            if not dry:
                self.bal[to] += amount
                self.minted += amount
            return True

        self._attempt(("mint", to, amount), key, lambda: self.book.mint(to, amount, key=key), apply)

    @rule(src=wallet, dst=wallet, amount=amounts, key=keys)
    def transfer(self, src: str, dst: str, amount: int, key: str) -> None:
        if src == dst:
            return

        def apply(dry: bool) -> bool:
            if self.bal[src] < amount:
                return False
            if not dry:
                self.bal[src] -= amount
                self.bal[dst] += amount
            return True

        self._attempt(("transfer", src, dst, amount), key, lambda: self.book.transfer(src, dst, amount, key=key), apply)

    @rule(src=wallet, amount=amounts, key=keys)
    def burn(self, src: str, amount: int, key: str) -> None:
        def apply(dry: bool) -> bool:
            if self.bal[src] < amount:
                return False
            if not dry:
                self.bal[src] -= amount
                self.minted -= amount
            return True

        self._attempt(("burn", src, amount), key, lambda: self.book.burn(src, amount, key=key), apply)

    @rule(j=job, payer=wallet, amount=amounts, key=keys)
    def open_escrow(self, j: str, payer: str, amount: int, key: str) -> None:
        def apply(dry: bool) -> bool:
            if j in self.escrow or self.bal[payer] < amount:
                return False
            if not dry:
                self.bal[payer] -= amount
                self.escrow[j] = (payer, amount, "held")
            return True

        self._attempt(("open", j, payer, amount), key, lambda: self.book.open_escrow(j, payer, amount, key=key), apply)

    @rule(j=job, payee=wallet, key=keys, refund=st.booleans())
    def close_escrow(self, j: str, payee: str, key: str, refund: bool) -> None:
        def apply(dry: bool) -> bool:
            if j not in self.escrow or self.escrow[j][2] != "held":
                return False
            if not dry:
                payer, amount, _ = self.escrow[j]
                self.bal[payer if refund else payee] += amount
                self.escrow[j] = (payer, amount, "closed")
            return True

        if refund:
            self._attempt(("refund", j, None), key, lambda: self.book.refund_escrow(j, key=key), apply)
        else:
            self._attempt(("release", j, payee), key, lambda: self.book.release_escrow(j, payee, key=key), apply)

    @precondition(lambda self: not self.shares)
    @rule(units=st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=4), key=keys)
    def issue_shares(self, units: list[int], key: str) -> None:
        alloc = dict(zip(WALLETS, units, strict=False))

        def apply(dry: bool) -> bool:
            if not dry:
                self.shares = dict(alloc)
            return True

        self._attempt(("issue", tuple(alloc.items())), key, lambda: self.book.issue_shares(MACHINE, alloc, key=key), apply)

    @precondition(lambda self: bool(self.shares))
    @rule(src=wallet, amount=amounts, key=keys)
    def split(self, src: str, amount: int, key: str) -> None:
        def apply(dry: bool) -> bool:
            if self.bal[src] < amount:
                return False
            if not dry:
                self.bal[src] -= amount
                for holder, part in split_pro_rata(amount, self.shares).items():
                    self.bal[holder] += part
            return True

        self._attempt(("split", src, amount), key, lambda: self.book.split_revenue(MACHINE, src, amount, key=key), apply)

    @precondition(lambda self: bool(self.done))
    @rule(data=st.data())
    def retry_an_earlier_request(self, data: st.DataObject) -> None:
        """Re-deliver a request that already went through: the ledger must not move money again."""
        key = data.draw(st.sampled_from(sorted(self.done)))
        request, first_id = self.done[key]
        before = self.book.balances()
        op = request[0]
        calls = {
            "mint": lambda: self.book.mint(request[1], request[2], key=key),
            "transfer": lambda: self.book.transfer(request[1], request[2], request[3], key=key),
            "burn": lambda: self.book.burn(request[1], request[2], key=key),
            "open": lambda: self.book.open_escrow(request[1], request[2], request[3], key=key),
            "refund": lambda: self.book.refund_escrow(request[1], key=key),
            "release": lambda: self.book.release_escrow(request[1], request[2], key=key),
            "issue": lambda: self.book.issue_shares(MACHINE, dict(request[1]), key=key),
            "split": lambda: self.book.split_revenue(MACHINE, request[1], request[2], key=key),
        }
        again = calls[op]()
        assert again.replayed and again.id == first_id
        assert self.book.balances() == before

    @invariant()
    def books_match_the_model(self) -> None:
        held = {f"escrow:{j}": (a if s == "held" else 0) for j, (_, a, s) in self.escrow.items()}
        actual = self.book.balances()
        expected = {**self.bal, **held}
        assert {a: actual.get(a, 0) for a in expected} == expected
        assert all(v >= 0 for a, v in actual.items() if a != ISSUANCE)
        assert sum(v for a, v in actual.items() if a != ISSUANCE) == self.minted == self.book.supply()
        assert sum(actual.values()) == 0

    @invariant()
    def each_key_posted_exactly_once(self) -> None:
        with self.book._engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(postings)).scalar()
            distinct = conn.execute(select(func.count(postings.c.key.distinct()))).scalar()
        assert count == distinct == len(self.done)

    def teardown(self) -> None:
        assert self.book.audit() == []


@pytest.mark.slow
def test_random_sequences_conserve_money(ledger: Ledger) -> None:
    machine = type("LedgerModelRun", (LedgerModel,), {"book": ledger})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


def test_a_split_that_would_lose_micro_units_is_refused(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """The book refuses any posting whose legs do not sum to zero, e.g. a split dropping its remainder."""
    import ledger.book as book_module

    def lossy(amount: int, units: dict[str, int]) -> dict[str, int]:
        total = sum(units.values())
        return {h: amount * n // total for h, n in units.items()}

    monkeypatch.setattr(book_module, "split_pro_rata", lossy)
    ledger.open_account("m")
    ledger.open_account("a")
    ledger.open_account("b")
    ledger.mint("m", 10, key="mint")
    ledger.issue_shares("x", {"a": 1, "b": 2}, key="ipo")
    with pytest.raises(AssertionError, match="unbalanced"):
        ledger.split_revenue("x", "m", 10, key="split")
    assert ledger.balance("m") == 10
    assert ledger.posting("split") is None
