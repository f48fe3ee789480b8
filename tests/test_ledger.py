"""The ledger's conformance suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import (
    EscrowClosed,
    EscrowExists,
    EscrowNotExpired,
    EscrowNotFound,
    IdempotencyConflict,
    InputError,
    InsufficientFunds,
    InvalidAmount,
    NoShareholders,
    SharesAlreadyIssued,
    UnknownAccount,
)
from ledger import ISSUANCE, AccountKind, EscrowState, Ledger, share_asset

Fund = Callable[..., Ledger]


def test_transfer_moves_money_and_keeps_the_books_balanced(funded: Fund) -> None:
    book = funded(alice=10_000_000, bob=0)
    posting = book.transfer("alice", "bob", 2_500_000, key="t1", memo="lunch")
    assert book.balance("alice") == 7_500_000
    assert book.balance("bob") == 2_500_000
    assert {(leg.account, leg.amount) for leg in posting.legs} == {("alice", -2_500_000), ("bob", 2_500_000)}
    assert book.supply() == 10_000_000
    assert book.audit() == []
    [line, _] = book.statement("alice")
    assert (line.kind, line.amount, line.memo) == ("transfer", -2_500_000, "lunch")


def test_repeated_key_returns_the_first_result_and_moves_money_once(funded: Fund) -> None:
    book = funded(alice=10_000_000, bob=0)
    first = book.transfer("alice", "bob", 1_000_000, key="pay-1")
    again = book.transfer("alice", "bob", 1_000_000, key="pay-1")
    assert again.replayed and not first.replayed
    assert (again.id, again.legs, again.created_at) == (first.id, first.legs, first.created_at)
    assert book.balance("bob") == 1_000_000
    assert book.posting("pay-1") == first


def test_reusing_a_key_for_another_request_is_refused(funded: Fund) -> None:
    book = funded(alice=10_000_000, bob=0)
    book.transfer("alice", "bob", 1_000_000, key="pay-1")
    with pytest.raises(IdempotencyConflict, match="pay-1"):
        book.transfer("alice", "bob", 2_000_000, key="pay-1")
    assert book.balance("bob") == 1_000_000


def test_overdraft_is_refused_and_nothing_is_written(funded: Fund) -> None:
    book = funded(alice=1_000_000, bob=0)
    with pytest.raises(InsufficientFunds) as err:
        book.transfer("alice", "bob", 1_000_001, key="too-much")
    assert (err.value.account, err.value.balance, err.value.needed) == ("alice", 1_000_000, 1_000_001)
    assert "fund it first" in str(err.value)
    assert book.balance("alice") == 1_000_000
    assert book.posting("too-much") is None
    # the key was not burnt by the failure: it can carry a corrected request
    book.transfer("alice", "bob", 1_000_000, key="too-much")
    assert book.balance("bob") == 1_000_000


@pytest.mark.parametrize("amount", [1.5, -1, 0, True, "100", None, 10**19])
def test_amounts_must_be_positive_integers_of_micro_units(funded: Fund, amount: object) -> None:
    book = funded(alice=1_000_000, bob=0)
    with pytest.raises(InvalidAmount):
        book.transfer("alice", "bob", amount, key="bad")  # type: ignore[arg-type]
    assert book.balance("alice") == 1_000_000
    assert book.posting("bad") is None


def test_float_error_tells_the_integer_to_use(funded: Fund) -> None:
    book = funded(alice=1_000_000, bob=0)
    with pytest.raises(InvalidAmount, match="pass 1500000 micro-units"):
        book.transfer("alice", "bob", 1.5, key="f")  # type: ignore[arg-type]


def test_unknown_account_is_refused_by_name(funded: Fund) -> None:
    book = funded(alice=1_000_000)
    with pytest.raises(UnknownAccount, match=r"'carol'.*open it first"):
        book.transfer("alice", "carol", 1, key="x")
    with pytest.raises(UnknownAccount):
        book.balance("carol")
    assert book.balance("alice") == 1_000_000


def test_open_account_is_idempotent_but_kind_is_fixed(ledger: Ledger) -> None:
    first = ledger.open_account("alice", owner="did:key:z6Mkexample")
    assert ledger.open_account("alice") == first
    with pytest.raises(InputError, match="exists as a wallet"):
        ledger.open_account("alice", kind=AccountKind.SYSTEM)


def test_issuance_and_escrow_accounts_are_not_open_to_plain_transfers(funded: Fund) -> None:
    book = funded(alice=5_000_000, bob=0)
    with pytest.raises(InputError):
        book.transfer(ISSUANCE, "alice", 1, key="steal")
    book.open_escrow("job-1", "alice", 1_000_000, key="esc")
    with pytest.raises(InputError, match="release_escrow"):
        book.transfer("escrow:job-1", "bob", 1_000_000, key="grab")
    assert book.balance("escrow:job-1") == 1_000_000


def test_escrow_release_pays_the_machine_once(funded: Fund) -> None:
    book = funded(req=5_000_000, machine=0)
    book.open_escrow("job-1", "req", 3_000_000, key="open-1")
    assert book.balance("req") == 2_000_000
    assert book.escrow("job-1").state is EscrowState.HELD
    assert book.open_escrow("job-1", "req", 3_000_000, key="open-1").replayed
    with pytest.raises(EscrowExists):
        book.open_escrow("job-1", "req", 3_000_000, key="open-2")

    paid = book.release_escrow("job-1", "machine", key="rel-1")
    assert book.release_escrow("job-1", "machine", key="rel-1").id == paid.id
    with pytest.raises(EscrowClosed, match="released"):
        book.refund_escrow("job-1", key="ref-1")
    assert book.balance("machine") == 3_000_000
    assert book.balance("escrow:job-1") == 0
    assert book.escrow("job-1").state is EscrowState.RELEASED
    assert book.audit() == []


def test_escrow_refund_returns_to_the_payer(funded: Fund) -> None:
    book = funded(req=5_000_000)
    book.open_escrow("job-2", "req", 4_000_000, key="open")
    book.refund_escrow("job-2", key="refund")
    assert book.balance("req") == 5_000_000
    assert book.escrow("job-2").state is EscrowState.REFUNDED
    with pytest.raises(EscrowClosed):
        book.release_escrow("job-2", "req", key="late")


class Hands:
    """A clock whose hands a test moves (the ledger dates and expires by its clock)."""

    def __init__(self) -> None:
        self.at = datetime(2026, 6, 1, 12, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at


def test_an_expired_escrow_is_refunded_to_its_payer_by_whoever_asks_and_never_before(funded: Fund) -> None:
    book = funded(req=5_000_000, machine=0)
    hands = Hands()
    book.clock = hands
    book.open_escrow("job-x", "req", 4_000_000, key="escrow:job-x", expires_at=hands.at + timedelta(hours=2))
    book.open_escrow("job-forever", "req", 1_000_000, key="escrow:job-forever")  # no expiry: its payer alone refunds it
    assert book.escrow("job-x").expires_at == hands.at + timedelta(hours=2)
    assert book.expired() == []
    with pytest.raises(EscrowNotExpired, match="expires at 2026-06-01T14:00:00"):
        book.expire_escrow("job-x", key="refund:job-x")
    hands.at += timedelta(hours=2)
    assert book.expired() == ["job-x"]
    with pytest.raises(EscrowNotExpired, match="has no expiry"):
        book.expire_escrow("job-forever", key="refund:job-forever")
    posting = book.expire_escrow("job-x", key="refund:job-x", memo="expired")
    assert {(leg.account, leg.amount) for leg in posting.legs} == {("escrow:job-x", -4_000_000), ("req", 4_000_000)}
    # the payer's own refund under the same key is the same posting, not a second one; a release is refused
    assert book.refund_escrow("job-x", key="refund:job-x").id == posting.id
    with pytest.raises(EscrowClosed):
        book.release_escrow("job-x", "machine", key="release:job-x")
    assert book.balance("req") == 4_000_000 and book.balance("machine") == 0 and book.expired() == []
    assert book.audit() == []


def test_a_ledger_written_before_escrows_expired_opens_and_gains_the_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    book = Ledger(url)
    book.open_account("req")
    book.mint("req", 2_000_000, key="m")
    book.open_escrow("job-old", "req", 1_000_000, key="escrow:job-old")
    with book.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE escrows DROP COLUMN expires_at")  # as an earlier TAMC wrote it
    book.close()
    again = Ledger(url)
    assert again.escrow("job-old").expires_at is None and again.balance("req") == 1_000_000
    again.open_escrow("job-new", "req", 1_000_000, key="escrow:job-new", expires_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert again.escrow("job-new").expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    again.close()


def test_escrow_errors(funded: Fund) -> None:
    book = funded(req=1_000_000)
    with pytest.raises(EscrowNotFound):
        book.release_escrow("nope", "req", key="k")
    with pytest.raises(InsufficientFunds):
        book.open_escrow("job-3", "req", 2_000_000, key="k2")
    with pytest.raises(EscrowNotFound):
        book.escrow("job-3")  # the failed open left nothing behind
    assert book.balance("req") == 1_000_000


def test_share_tokens_form_the_cap_table(funded: Fund) -> None:
    book = funded(ann=0, ben=0, cat=0)
    book.issue_shares("prusa-01", {"ann": 600, "ben": 400}, key="ipo")
    assert book.cap_table("prusa-01") == {"ann": 600, "ben": 400}
    assert book.issue_shares("prusa-01", {"ann": 600, "ben": 400}, key="ipo").replayed
    with pytest.raises(SharesAlreadyIssued):
        book.issue_shares("prusa-01", {"cat": 1}, key="ipo-2")
    book.transfer_shares("prusa-01", "ben", "cat", 150, key="sell")
    assert book.cap_table("prusa-01") == {"ann": 600, "ben": 250, "cat": 150}
    with pytest.raises(InsufficientFunds):
        book.transfer_shares("prusa-01", "cat", "ann", 151, key="oversell")
    assert book.supply(share_asset("prusa-01")) == 1000


def test_revenue_split_is_pro_rata_and_exact(funded: Fund) -> None:
    book = funded(machine=10_000_000, ann=0, ben=0, cat=0)
    book.issue_shares("m", {"ann": 1, "ben": 1, "cat": 1}, key="ipo")
    posting = book.split_revenue("m", "machine", 1_000_000, key="rev-1")
    got = {a: book.balance(a) for a in ("ann", "ben", "cat")}
    assert sorted(got.values()) == [333_333, 333_333, 333_334]
    assert got["ann"] == 333_334  # the leftover micro-unit goes to the first in id order on a tie
    assert sum(got.values()) + book.balance("machine") == 10_000_000
    assert book.split_revenue("m", "machine", 1_000_000, key="rev-1").id == posting.id
    assert book.balance("machine") == 9_000_000
    assert book.audit() == []


def test_revenue_split_follows_the_cap_table_at_the_time(funded: Fund) -> None:
    book = funded(machine=100, ann=0, ben=0)
    book.issue_shares("m", {"ann": 3, "ben": 1}, key="ipo")
    book.split_revenue("m", "machine", 10, key="r1")
    assert (book.balance("ann"), book.balance("ben")) == (8, 2)  # 7.5 and 2.5: tie on remainder, ann first
    book.transfer_shares("m", "ann", "ben", 3, key="sell")
    book.split_revenue("m", "machine", 10, key="r2")
    assert (book.balance("ann"), book.balance("ben")) == (8, 12)


def test_split_without_shares_or_funds_is_refused(funded: Fund) -> None:
    book = funded(machine=5, ann=0)
    with pytest.raises(NoShareholders):
        book.split_revenue("m", "machine", 5, key="r")
    book.issue_shares("m", {"ann": 1}, key="ipo")
    with pytest.raises(InsufficientFunds):
        book.split_revenue("m", "machine", 6, key="r")
    assert book.balance("ann") == 0


def test_burn_takes_money_out_and_supply_follows(funded: Fund) -> None:
    book = funded(alice=3_000_000)
    book.burn("alice", 1_000_000, key="withdraw")
    assert book.supply() == 2_000_000
    with pytest.raises(InsufficientFunds):
        book.burn("alice", 2_000_001, key="withdraw-2")
    assert book.audit() == []


def test_a_second_ledger_on_the_same_database_sees_everything(funded: Fund, ledger_url: str) -> None:
    book = funded(alice=7)
    other = Ledger(ledger_url)
    try:
        assert other.balance("alice") == 7
        other.open_account("bob")
        other.transfer("alice", "bob", 7, key="move")
        assert book.balance("bob") == 7
    finally:
        other.close()
