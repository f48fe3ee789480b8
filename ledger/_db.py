"""Tables and transactions of the ledger, for SQLite and PostgreSQL alike.

Writers never lose to each other: on SQLite every write transaction starts with ``BEGIN
IMMEDIATE`` (one writer at a time, WAL so readers don't block, a busy timeout so a second process
waits instead of failing); on PostgreSQL the balance rows a posting touches are locked with
``SELECT … FOR UPDATE`` in a fixed order. A transaction that still collides (a deadlock, a unique
idempotency key inserted by a concurrent writer) is retried from the start, where it then sees the
other writer's result.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import StaticPool

__all__ = [
    "accounts", "audit", "aware", "balances", "charters", "connect", "create_tables", "entries", "escrows", "executions", "metadata", "postings",
    "proposals", "share_classes", "standings", "transaction", "votes",
]

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("owner", String(200)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

balances = Table(
    "balances",
    metadata,
    Column("account_id", String(200), ForeignKey("accounts.id"), primary_key=True),
    Column("asset", String(220), primary_key=True),
    Column("amount", BigInteger, nullable=False),
)

postings = Table(
    "postings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("key", String(300), nullable=False, unique=True),
    Column("kind", String(30), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("memo", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

entries = Table(
    "entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("posting_id", String(36), ForeignKey("postings.id"), nullable=False),
    Column("account_id", String(200), ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(220), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Index("ix_entries_account", "account_id", "asset"),
    Index("ix_entries_posting", "posting_id"),
)

escrows = Table(
    "escrows",
    metadata,
    Column("job_id", String(200), primary_key=True),
    Column("account_id", String(200), ForeignKey("accounts.id"), nullable=False),
    Column("payer", String(200), ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),
    Column("open_key", String(300), nullable=False),
    Column("close_posting", String(36)),
    Column("expires_at", DateTime(timezone=True)),
    # past this, anyone may have the escrow refunded to its payer (a requester that never came back)
)

share_classes = Table(
    "share_classes",
    metadata,
    Column("machine_id", String(200), primary_key=True),
    Column("total_units", BigInteger, nullable=False),
    Column("issue_key", String(300), nullable=False),
)

proposals = Table(
    "proposals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("key", String(300), nullable=False, unique=True),
    Column("machine_id", String(200), nullable=False),
    Column("kind", String(30), nullable=False),
    Column("title", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("opened_by", String(200), nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("closes_at", DateTime(timezone=True), nullable=False),
    Column("weights", Text, nullable=False),
    Column("state", String(12), nullable=False),
    Index("ix_proposals_machine", "machine_id", "state"),
)

votes = Table(
    "votes",
    metadata,
    Column("proposal_id", String(36), ForeignKey("proposals.id"), primary_key=True),
    Column("holder", String(200), primary_key=True),
    Column("choice", String(8), nullable=False),
    Column("weight", BigInteger, nullable=False),
    Column("cast_at", DateTime(timezone=True), nullable=False),
)

charters = Table(
    "charters",
    metadata,
    Column("entity", String(200), primary_key=True),
    Column("body", Text, nullable=False),
)

standings = Table(
    "standings",
    metadata,
    Column("machine_id", String(200), primary_key=True),
    Column("status", String(10), nullable=False),
    Column("region", String(100)),
    Column("policy", Text, nullable=False),
    Column("retain_bps", Integer),
    Column("parent", String(200)),
    Column("missed_h", Float, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False),
)

executions = Table(
    "executions",
    metadata,
    Column("proposal_id", String(36), ForeignKey("proposals.id"), primary_key=True),
    Column("plan", Text, nullable=False),
    Column("state", String(10), nullable=False),
    Column("detail", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("entity", String(200), nullable=False),
    Column("proposal_id", String(36)),
    Column("action", String(30), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_audit_entity", "entity"),
    Index("ix_audit_proposal", "proposal_id"),
)

T = TypeVar("T")


def aware(ts: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time we store is UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def connect(url: str, *, durable: bool = True) -> Engine:
    """An engine for ``url`` with the settings concurrent writers need, tables created. ``durable``
    False (SQLite) skips the sync to disk at each commit: a crash of the process loses nothing, a
    power cut may lose the last commits (a simulated city's ledger, made anew each run)."""
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                if not durable:
                    cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("tamc_write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    else:
        engine = create_engine(url, pool_pre_ping=True)
    create_tables(engine, metadata)
    _retry(lambda: _upgrade(engine), (IntegrityError, ProgrammingError, OperationalError))
    return engine


def create_tables(engine: Engine, tables: MetaData) -> None:
    """``tables.create_all``, when other processes may be creating them at the same moment (many
    ``tamc agent`` processes starting on a new PostgreSQL ledger): a collision is tried again, and
    then finds the tables made."""
    _retry(lambda: tables.create_all(engine), (IntegrityError, ProgrammingError, OperationalError))


def _upgrade(engine: Engine) -> None:
    """Columns added since a table was first made (``create_all`` makes missing tables only): a
    ledger written by an earlier TAMC opens as it is, and gains them."""
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                kind = column.type.compile(dialect=engine.dialect)
                with engine.begin() as conn:
                    conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}')


_WRITERS: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_WRITERS_GUARD = threading.Lock()


def _writer_lock(engine: Engine) -> threading.RLock | None:
    """One lock per SQLite engine for its writers: threads of one process take turns on it at once,
    instead of in SQLite's busy handler, which sleeps 1, 2, 5… ms between tries (another process
    still waits in the busy handler)."""
    if engine.dialect.name != "sqlite":
        return None
    with _WRITERS_GUARD:
        lock = _WRITERS.get(engine)
        if lock is None:
            lock = _WRITERS[engine] = threading.RLock()
        return lock


def transaction(engine: Engine, fn: Callable[[Connection], T], *, write: bool = True) -> T:
    """Run ``fn`` in one transaction, retrying it whole on write-write collisions."""
    lock = _writer_lock(engine) if write else None

    def attempt() -> T:
        with engine.connect() as conn:
            conn.execution_options(tamc_write=write)
            with conn.begin():
                return fn(conn)

    if lock is None:
        return _retry(attempt, (IntegrityError, OperationalError))
    with lock:
        return _retry(attempt, (IntegrityError, OperationalError))


PATIENCE_S = 30.0
"""How long a transaction keeps trying while the database is unreachable (PostgreSQL restarting,
a dropped connection): a restart under the ledger costs a wait, not an error."""


def _retry(fn: Callable[[], T], errors: tuple[type[Exception], ...], attempts: int = 12) -> T:
    """Run ``fn`` again on ``errors``: a write-write collision ``attempts`` times with a short
    random backoff; an unreachable database (``OperationalError``) for up to ``PATIENCE_S``."""
    began = time.monotonic()
    n = 0
    while True:
        try:
            return fn()
        except errors as exc:
            n += 1
            waiting = isinstance(exc, OperationalError) and time.monotonic() - began < PATIENCE_S
            if n >= attempts and not waiting:
                raise
            time.sleep(random.uniform(0, 0.005 * 2**n if n < 6 else 0.3))
