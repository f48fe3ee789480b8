"""The ledger: accounts, double-entry postings, escrow, share tokens and revenue splits.

Every change of money is one posting whose legs sum to zero per asset, made under an idempotency
key: the first call writes it, a repeat with the same request returns that first posting
(``replayed=True``) and writes nothing, and a repeat with a different request is refused. Money
enters only by ``mint`` and leaves only by ``burn``, both against ``system:issuance``, the only
account allowed below zero, so the sum over all accounts of each asset is always zero.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from core.clock import Clock, WallClock
from core.errors import (
    EscrowClosed,
    EscrowExists,
    EscrowNotExpired,
    EscrowNotFound,
    IdempotencyConflict,
    InputError,
    InsufficientFunds,
    NoShareholders,
    SharesAlreadyIssued,
    UnknownAccount,
)
from core.money import require_micros
from ledger import _db
from ledger._db import accounts, aware, balances, entries, escrows, postings, share_classes
from ledger.models import (
    ISSUANCE,
    MONEY,
    Account,
    AccountKind,
    Escrow,
    EscrowState,
    Leg,
    Posting,
    StatementLine,
    share_asset,
)
from ledger.split import split_pro_rata

__all__ = ["Ledger"]

DEFAULT_URL = "sqlite:///tamc-ledger.db"


class Ledger:
    """Money and shares in SQL. Safe to share between threads and processes."""

    def __init__(self, url: str = DEFAULT_URL, *, clock: Clock | None = None, durable: bool = True) -> None:
        self.url = url
        self.clock: Clock = clock or WallClock()
        """What postings and accounts are dated by: a simulated city's ledger keeps the market's time."""
        self._engine = _db.connect(url, durable=durable)
        self._issued: set[str] = set()
        self._insert = pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert
        self._open_account = self._insert(accounts).on_conflict_do_nothing()
        self._open_balance = self._insert(balances).on_conflict_do_nothing()
        self.open_account(ISSUANCE, kind=AccountKind.SYSTEM)

    def close(self) -> None:
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The database engine, for stores that keep their tables beside the ledger's (governance)."""
        return self._engine

    # -- accounts -------------------------------------------------------------------------

    def open_account(self, account_id: str, *, kind: AccountKind = AccountKind.WALLET, owner: str | None = None) -> Account:
        """Open ``account_id``, or return it if it is already open with the same kind."""
        if not isinstance(account_id, str) or not account_id.strip() or len(account_id) > 200:
            raise InputError(f"account id must be a non-empty string of at most 200 characters, got {account_id!r}")

        def run(conn: Connection) -> Account:
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
            if row is None:
                conn.execute(self._insert(accounts).values(
                    id=account_id, kind=kind.value, owner=owner, created_at=self.clock.now()
                ).on_conflict_do_nothing())
                row = conn.execute(select(accounts).where(accounts.c.id == account_id)).one()
            if row.kind != kind.value:
                raise InputError(f"account {account_id!r} exists as a {row.kind} account, not {kind.value}")
            return Account(id=row.id, kind=AccountKind(row.kind), owner=row.owner)

        return _db.transaction(self._engine, run)

    def bind_owner(self, account_id: str, owner: str) -> Account:
        """Record ``owner`` (a did) as the owner of an account opened without one; refused if it has
        another. Votes on a holder's shares count only when signed by the account's owner."""

        def run(conn: Connection) -> Account:
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).first()
            if row is None:
                raise UnknownAccount(f"no account {account_id!r}; open it first")
            if row.owner is None:
                conn.execute(update(accounts).where(accounts.c.id == account_id).values(owner=owner))
            elif row.owner != owner:
                raise InputError(f"account {account_id!r} is owned by {row.owner}, not {owner}")
            return Account(id=row.id, kind=AccountKind(row.kind), owner=owner)

        return _db.transaction(self._engine, run)

    def account(self, account_id: str) -> Account:
        row = _db.transaction(
            self._engine, lambda c: c.execute(select(accounts).where(accounts.c.id == account_id)).first(), write=False
        )
        if row is None:
            raise UnknownAccount(f"no account {account_id!r}; open it first")
        return Account(id=row.id, kind=AccountKind(row.kind), owner=row.owner)

    def accounts(self) -> list[Account]:
        rows = _db.transaction(self._engine, lambda c: c.execute(select(accounts).order_by(accounts.c.id)).all(), write=False)
        return [Account(id=r.id, kind=AccountKind(r.kind), owner=r.owner) for r in rows]

    # -- money ------------------------------------------------------------------------------

    def mint(self, account: str, amount: int, *, key: str, asset: str = MONEY, memo: str = "") -> Posting:
        """Create ``amount`` at the system's edge (a deposit) and credit it to ``account``."""
        require_micros(amount)
        return self._simple("mint", ISSUANCE, account, amount, key=key, asset=asset, memo=memo)

    def burn(self, account: str, amount: int, *, key: str, asset: str = MONEY, memo: str = "") -> Posting:
        """Take ``amount`` out of the system (a withdrawal) from ``account``."""
        require_micros(amount)
        return self._simple("burn", account, ISSUANCE, amount, key=key, asset=asset, memo=memo)

    def transfer(self, source: str, dest: str, amount: int, *, key: str, asset: str = MONEY, memo: str = "") -> Posting:
        """Move ``amount`` from ``source`` to ``dest``; refused if ``source`` would go below zero."""
        require_micros(amount)
        if source == dest:
            raise InputError(f"a transfer needs two different accounts, got {source!r} twice")
        if ISSUANCE in (source, dest):
            raise InputError(f"{ISSUANCE} moves money only through mint and burn")
        return self._simple("transfer", source, dest, amount, key=key, asset=asset, memo=memo)

    def transfers(self, moves: Sequence[tuple[str, str, int]], *, key: str, memo: str = "") -> Posting:
        """Several money transfers ``(source, dest, amount)`` as one posting: all of them or none
        (a spawn pays the seller and funds the child at once, or not at all)."""
        if not moves:
            raise InputError("transfers needs at least one (source, dest, amount) move")
        legs: list[tuple[str, str, int]] = []
        for source, dest, amount in moves:
            require_micros(amount)
            if source == dest or ISSUANCE in (source, dest):
                raise InputError(f"a transfer needs two different accounts other than {ISSUANCE}, got {source!r} -> {dest!r}")
            legs += [(source, MONEY, -amount), (dest, MONEY, amount)]
        fp = _fingerprint("transfers", moves=[list(m) for m in moves])

        def run(conn: Connection) -> Posting:
            return self._replay(conn, key, fp) or self._post(conn, key, "transfers", fp, memo, legs, allow_escrow=False)

        return _db.transaction(self._engine, run)

    def _simple(self, kind: str, source: str, dest: str, amount: int, *, key: str, asset: str, memo: str) -> Posting:
        fp = _fingerprint(kind, source=source, dest=dest, amount=amount, asset=asset)
        legs = [(source, asset, -amount), (dest, asset, amount)]

        def run(conn: Connection) -> Posting:
            return self._replay(conn, key, fp) or self._post(conn, key, kind, fp, memo, legs, allow_escrow=False)

        return _db.transaction(self._engine, run)

    # -- escrow -----------------------------------------------------------------------------

    def open_escrow(self, job_id: str, payer: str, amount: int, *, key: str, memo: str = "",
                    expires_at: datetime | None = None) -> Posting:
        """Move ``amount`` from ``payer`` into a new escrow account held for ``job_id``. Past
        ``expires_at`` (if given) anyone may have it refunded to the payer (``expire_escrow``)."""
        require_micros(amount)
        fp = _fingerprint("escrow.open", job=job_id, payer=payer, amount=amount,
                          **({"expires": aware(expires_at).isoformat()} if expires_at else {}))
        account_id = f"escrow:{job_id}"

        def run(conn: Connection) -> Posting:
            if done := self._replay(conn, key, fp):
                return done
            if conn.execute(_ESCROW_EXISTS, {"job": job_id}).first():
                raise EscrowExists(f"job {job_id!r} already has an escrow; reuse its key to retry the open")
            conn.execute(self._open_account, {"id": account_id, "kind": AccountKind.ESCROW.value, "owner": payer,
                                              "created_at": self.clock.now()})
            posting = self._post(conn, key, "escrow.open", fp, memo, [(payer, MONEY, -amount), (account_id, MONEY, amount)])
            conn.execute(_ADD_ESCROW, {"job_id": job_id, "account_id": account_id, "payer": payer, "amount": amount,
                                       "state": EscrowState.HELD.value, "open_key": key, "expires_at": expires_at})
            return posting

        return _db.transaction(self._engine, run)

    def release_escrow(self, job_id: str, payee: str, *, key: str, memo: str = "") -> Posting:
        """Pay the whole escrow of ``job_id`` to ``payee`` (the job is done)."""
        return self._close_escrow(job_id, payee, EscrowState.RELEASED, key=key, memo=memo)

    def refund_escrow(self, job_id: str, *, key: str, memo: str = "") -> Posting:
        """Return the whole escrow of ``job_id`` to its payer (the job failed or expired)."""
        return self._close_escrow(job_id, None, EscrowState.REFUNDED, key=key, memo=memo)

    def expire_escrow(self, job_id: str, *, key: str, memo: str = "") -> Posting:
        """Refund the escrow of ``job_id`` to its payer because it has expired: anyone may ask, and
        the money goes back to the payer and nowhere else. ``EscrowNotExpired`` before its expiry
        (or if it has none). Under the same key as the payer's own refund, the two are one posting."""
        return self._close_escrow(job_id, None, EscrowState.REFUNDED, key=key, memo=memo, expired_only=True)

    def expired(self) -> list[str]:
        """Jobs whose escrow is held past its expiry, on this ledger's clock."""
        now = self.clock.now()
        return _db.transaction(self._engine, lambda c: [r.job_id for r in c.execute(_EXPIRED, {"now": now})], write=False)

    def _close_escrow(self, job_id: str, payee: str | None, state: EscrowState, *, key: str, memo: str,
                      expired_only: bool = False) -> Posting:
        kind = f"escrow.{'release' if state is EscrowState.RELEASED else 'refund'}"
        fp = _fingerprint(kind, job=job_id, payee=payee)

        def run(conn: Connection) -> Posting:
            if done := self._replay(conn, key, fp):
                return done
            row = conn.execute(_ESCROW_FOR_UPDATE, {"job": job_id}).first()
            if row is None:
                raise EscrowNotFound(f"no escrow for job {job_id!r}")
            if row.state != EscrowState.HELD.value:
                raise EscrowClosed(f"escrow for job {job_id!r} was already {row.state} (posting {row.close_posting})")
            if expired_only and (row.expires_at is None or aware(row.expires_at) > aware(self.clock.now())):
                when = f"expires at {aware(row.expires_at).isoformat(timespec='seconds')}" if row.expires_at else "has no expiry"
                raise EscrowNotExpired(f"the escrow of job {job_id!r} {when}: until then only its payer may refund it")
            to = payee if payee is not None else row.payer
            posting = self._post(conn, key, kind, fp, memo, [(row.account_id, MONEY, -row.amount), (to, MONEY, row.amount)])
            conn.execute(_CLOSE_ESCROW, {"job": job_id, "state": state.value, "posting": posting.id})
            return posting

        return _db.transaction(self._engine, run)

    def escrow(self, job_id: str) -> Escrow:
        row = _db.transaction(
            self._engine, lambda c: c.execute(_ESCROW, {"job": job_id}).first(), write=False
        )
        if row is None:
            raise EscrowNotFound(f"no escrow for job {job_id!r}")
        return Escrow(job_id=row.job_id, account=row.account_id, payer=row.payer, amount=row.amount, state=EscrowState(row.state),
                      expires_at=aware(row.expires_at) if row.expires_at else None)

    # -- shares -----------------------------------------------------------------------------

    def issue_shares(self, machine_id: str, allocation: Mapping[str, int], *, key: str, memo: str = "") -> Posting:
        """Issue a machine's share tokens once, ``allocation`` mapping holder account to units."""
        if not allocation:
            raise InputError(f"issuing shares of {machine_id!r} needs at least one holder")
        for holder, units in allocation.items():
            require_micros(units, what=f"share units for {holder!r}")
        alloc = dict(sorted(allocation.items()))
        asset = share_asset(machine_id)
        fp = _fingerprint("shares.issue", machine=machine_id, allocation=alloc)
        legs = [(ISSUANCE, asset, -sum(alloc.values()))] + [(h, asset, u) for h, u in alloc.items()]

        def run(conn: Connection) -> Posting:
            if done := self._replay(conn, key, fp):
                return done
            if conn.execute(select(share_classes.c.machine_id).where(share_classes.c.machine_id == machine_id)).first():
                raise SharesAlreadyIssued(f"shares of {machine_id!r} are already issued; move them with transfer_shares")
            posting = self._post(conn, key, "shares.issue", fp, memo, legs)
            conn.execute(share_classes.insert().values(machine_id=machine_id, total_units=sum(alloc.values()), issue_key=key))
            return posting

        return _db.transaction(self._engine, run)

    def transfer_shares(self, machine_id: str, source: str, dest: str, units: int, *, key: str, memo: str = "") -> Posting:
        return self.transfer(source, dest, units, key=key, asset=share_asset(machine_id), memo=memo)

    def cap_table(self, machine_id: str) -> dict[str, int]:
        """Holder account -> share units of ``machine_id`` (holders with none left out)."""
        return _db.transaction(self._engine, lambda c: self._cap_table(c, machine_id), write=False)

    def _cap_table(self, conn: Connection, machine_id: str) -> dict[str, int]:
        rows = conn.execute(_CAP_TABLE, {"asset": share_asset(machine_id)})
        return {r.account_id: r.amount for r in rows}

    def has_shares(self, entity: str) -> bool:
        """Whether ``entity`` (a machine, or a collective such as ``dao:fab-cell``) has shares issued."""
        return entity in self.issued([entity])

    def issued(self, entities: Iterable[str]) -> set[str]:
        """Which of ``entities`` have shares issued, in one read (a payout asks it of every holder
        it pays). A yes is remembered: shares, once issued, stay."""
        asked = set(entities)
        unknown = asked - self._issued
        if unknown:
            rows = _db.transaction(self._engine, lambda c: c.execute(_ISSUED, {"ids": sorted(unknown)}).all(), write=False)
            self._issued.update(r.machine_id for r in rows)
        return asked & self._issued

    def split_revenue(self, machine_id: str, source: str, amount: int, *, key: str, memo: str = "") -> Posting:
        """Pay ``amount`` from ``source`` to the holders of ``machine_id`` pro rata, exactly."""
        require_micros(amount)
        fp = _fingerprint("revenue.split", machine=machine_id, source=source, amount=amount)

        def run(conn: Connection) -> Posting:
            if done := self._replay(conn, key, fp):
                return done
            table = self._cap_table(conn, machine_id)
            if not table:
                raise NoShareholders(f"machine {machine_id!r} has no shares issued; issue_shares first")
            parts = split_pro_rata(amount, table)
            legs = [(source, MONEY, -amount)] + [(h, MONEY, p) for h, p in parts.items() if p]
            return self._post(conn, key, "revenue.split", fp, memo, legs)

        return _db.transaction(self._engine, run)

    # -- reading ----------------------------------------------------------------------------

    def balance(self, account: str, asset: str = MONEY) -> int:
        def run(conn: Connection) -> int:
            self._require_accounts(conn, {account})
            amount = conn.execute(_BALANCE, {"account": account, "asset": asset}).scalar()
            return int(amount or 0)

        return _db.transaction(self._engine, run, write=False)

    def balances(self, asset: str = MONEY) -> dict[str, int]:
        """Every account's balance of ``asset``, the issuance account included (it is negative)."""
        rows = _db.transaction(
            self._engine,
            lambda c: c.execute(select(balances.c.account_id, balances.c.amount).where(balances.c.asset == asset)).all(),
            write=False,
        )
        return {r.account_id: int(r.amount) for r in rows}

    def supply(self, asset: str = MONEY) -> int:
        """Everything minted minus everything burnt."""
        return -self.balances(asset).get(ISSUANCE, 0)

    def statement(self, account: str, *, asset: str = MONEY, limit: int | None = 50, since: datetime | None = None) -> list[StatementLine]:
        """The latest ``limit`` movements of ``account`` (all with ``None``), newest first, from ``since`` on."""

        def run(conn: Connection) -> list[StatementLine]:
            self._require_accounts(conn, {account})
            query = (
                select(entries.c.posting_id, entries.c.asset, entries.c.amount, postings.c.key, postings.c.kind,
                       postings.c.memo, postings.c.created_at)
                .join(postings, postings.c.id == entries.c.posting_id)
                .where(entries.c.account_id == account, entries.c.asset == asset)
                .order_by(entries.c.id.desc())
                .limit(limit)
            )
            if since is not None:
                query = query.where(postings.c.created_at >= since)
            rows = conn.execute(query)
            return [StatementLine(**{**r._mapping, "created_at": _db.aware(r.created_at)}) for r in rows]

        return _db.transaction(self._engine, run, write=False)

    def posting(self, key: str) -> Posting | None:
        """The posting made under idempotency ``key``, if any."""
        return _db.transaction(self._engine, lambda c: self._load(c, key, replayed=False), write=False)

    def postings(self, key_prefix: str) -> list[Posting]:
        """Every posting whose idempotency key starts with ``key_prefix`` (``release:{job}``: the
        job's payment and anything posted under a key like it), in key order."""
        def run(conn: Connection) -> list[Posting]:
            keys = conn.execute(select(postings.c.key).where(postings.c.key.startswith(key_prefix, autoescape=True))
                                .order_by(postings.c.key)).scalars().all()
            return [p for k in keys if (p := self._load(conn, k, replayed=False)) is not None]

        return _db.transaction(self._engine, run, write=False)

    def audit(self) -> list[str]:
        """Problems found, or an empty list: each balance equals its entries, each asset sums to zero."""

        def run(conn: Connection) -> list[str]:
            problems = []
            sums = {(r.account_id, r.asset): int(r.total) for r in conn.execute(
                select(entries.c.account_id, entries.c.asset, func.sum(entries.c.amount).label("total"))
                .group_by(entries.c.account_id, entries.c.asset)
            )}
            per_asset: dict[str, int] = defaultdict(int)
            kinds = {r.id: r.kind for r in conn.execute(select(accounts.c.id, accounts.c.kind))}
            for r in conn.execute(select(balances)):
                per_asset[r.asset] += r.amount
                if r.amount != sums.get((r.account_id, r.asset), 0):
                    problems.append(f"{r.account_id} {r.asset}: balance {r.amount} != entries {sums.get((r.account_id, r.asset), 0)}")
                if r.amount < 0 and kinds.get(r.account_id) != AccountKind.SYSTEM.value:
                    problems.append(f"{r.account_id} {r.asset}: negative balance {r.amount}")
            problems += [f"asset {a} sums to {s}, not 0" for a, s in per_asset.items() if s]
            for r in conn.execute(select(entries.c.posting_id, entries.c.asset, func.sum(entries.c.amount).label("net"))
                                  .group_by(entries.c.posting_id, entries.c.asset)):
                if r.net:
                    problems.append(f"posting {r.posting_id} {r.asset} legs sum to {r.net}")
            return problems

        return _db.transaction(self._engine, run, write=False)

    # -- the one write path -------------------------------------------------------------------

    def _replay(self, conn: Connection, key: str, fingerprint: str) -> Posting | None:
        if not isinstance(key, str) or not key or len(key) > 300:
            raise InputError(f"idempotency key must be a non-empty string of at most 300 characters, got {key!r}")
        row = conn.execute(_FINGERPRINT, {"key": key}).first()
        if row is None:
            return None
        if row.fingerprint != fingerprint:
            raise IdempotencyConflict(f"idempotency key {key!r} was already used for a different request; use a new key")
        return self._load(conn, key, replayed=True)

    def _load(self, conn: Connection, key: str, *, replayed: bool) -> Posting | None:
        p = conn.execute(select(postings).where(postings.c.key == key)).first()
        if p is None:
            return None
        legs = conn.execute(
            select(entries.c.account_id, entries.c.asset, entries.c.amount)
            .where(entries.c.posting_id == p.id).order_by(entries.c.id)
        )
        return Posting(
            id=p.id, key=p.key, kind=p.kind, memo=p.memo, created_at=_db.aware(p.created_at), replayed=replayed,
            legs=tuple(Leg(account=r.account_id, asset=r.asset, amount=r.amount) for r in legs),
        )

    def _require_accounts(self, conn: Connection, ids: set[str]) -> dict[str, str]:
        found = {r.id: r.kind for r in conn.execute(_ACCOUNT_KINDS, {"ids": sorted(ids)})}
        if missing := sorted(ids - found.keys()):
            raise UnknownAccount(f"no account {', '.join(map(repr, missing))}; open it first")
        return found

    def _post(self, conn: Connection, key: str, kind: str, fingerprint: str, memo: str,
              legs: Sequence[tuple[str, str, int]], *, allow_escrow: bool = True) -> Posting:
        deltas: dict[tuple[str, str], int] = defaultdict(int)
        spent: dict[tuple[str, str], int] = defaultdict(int)
        for account, asset, amount in legs:
            deltas[(account, asset)] += amount
            spent[(account, asset)] += max(0, -amount)
        per_asset: dict[str, int] = defaultdict(int)
        for (_, asset), amount in deltas.items():
            per_asset[asset] += amount
        if any(per_asset.values()):
            raise AssertionError(f"unbalanced posting {legs}: a bug in the caller, nothing was written")
        kinds = self._require_accounts(conn, {a for a, _ in deltas})
        if not allow_escrow and AccountKind.ESCROW.value in kinds.values():
            raise InputError("escrow accounts move money only through release_escrow and refund_escrow")

        cells = sorted(deltas)  # one lock order for every writer: no deadlocks between postings
        current = {(r.account_id, r.asset): r.amount for r in conn.execute(_BALANCES_FOR_UPDATE, {"cells": cells})}
        if missing := [c for c in cells if c not in current]:  # a first movement of an asset: open its balance at 0
            conn.execute(self._open_balance, [{"account_id": a, "asset": s, "amount": 0} for a, s in missing])
            current = {(r.account_id, r.asset): r.amount for r in conn.execute(_BALANCES_FOR_UPDATE, {"cells": cells})}
        for cell in cells:
            # Each account must hold what it pays out before any leg pays it back (a holder
            # splitting revenue to itself still needs the whole amount first).
            if current[cell] < spent[cell] and kinds[cell[0]] != AccountKind.SYSTEM.value:
                raise InsufficientFunds(cell[0], current[cell], spent[cell], cell[1])

        posting_id = str(uuid.uuid4())
        created = self.clock.now()
        conn.execute(_ADD_POSTING, {"id": posting_id, "key": key, "kind": kind, "fingerprint": fingerprint, "memo": memo,
                                    "created_at": created})
        conn.execute(_ADD_ENTRIES, [
            {"posting_id": posting_id, "account_id": a, "asset": s, "amount": n} for a, s, n in legs
        ])
        conn.execute(_ADD_TO_BALANCE, [{"a": a, "s": asset, "d": deltas[(a, asset)]} for a, asset in cells])  # one round trip
        return Posting(
            id=posting_id, key=key, kind=kind, memo=memo, created_at=created,
            legs=tuple(Leg(account=a, asset=s, amount=n) for a, s, n in legs),
        )


# The statements of the hot paths, built once: building one costs more than running it, and a built
# statement keeps its cache key, so SQLAlchemy finds its compiled form at once.
_ADD_TO_BALANCE = (update(balances).where(balances.c.account_id == bindparam("a"), balances.c.asset == bindparam("s"))
                   .values(amount=balances.c.amount + bindparam("d")))
_BALANCES_FOR_UPDATE = (select(balances).where(tuple_(balances.c.account_id, balances.c.asset).in_(bindparam("cells", expanding=True)))
                        .order_by(balances.c.account_id, balances.c.asset).with_for_update())
_BALANCE = select(balances.c.amount).where(balances.c.account_id == bindparam("account"), balances.c.asset == bindparam("asset"))
_ACCOUNT_KINDS = select(accounts.c.id, accounts.c.kind).where(accounts.c.id.in_(bindparam("ids", expanding=True)))
_FINGERPRINT = select(postings.c.fingerprint).where(postings.c.key == bindparam("key"))
_ADD_POSTING = postings.insert()
_ADD_ENTRIES = entries.insert()
_ESCROW = select(escrows).where(escrows.c.job_id == bindparam("job"))
_ESCROW_FOR_UPDATE = _ESCROW.with_for_update()
_ESCROW_EXISTS = select(escrows.c.job_id).where(escrows.c.job_id == bindparam("job"))
_ADD_ESCROW = escrows.insert()
_EXPIRED = (select(escrows.c.job_id).where(escrows.c.state == EscrowState.HELD.value, escrows.c.expires_at.is_not(None),
                                           escrows.c.expires_at <= bindparam("now")).order_by(escrows.c.job_id))
_CLOSE_ESCROW = (update(escrows).where(escrows.c.job_id == bindparam("job"))
                 .values(state=bindparam("state"), close_posting=bindparam("posting")))
_CAP_TABLE = (select(balances.c.account_id, balances.c.amount)
              .where(balances.c.asset == bindparam("asset"), balances.c.account_id != ISSUANCE, balances.c.amount > 0)
              .order_by(balances.c.account_id))
_ISSUED = select(share_classes.c.machine_id).where(share_classes.c.machine_id.in_(bindparam("ids", expanding=True)))


def _fingerprint(op: str, **params: Any) -> str:
    """What a repeated request under the same key must match. Its own stable encoding, not the
    signatures' (RFC 8785): fingerprints stored by an older version must keep matching."""
    doc = json.dumps({"op": op, **params}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()
