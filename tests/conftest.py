"""Shared fixtures. The ledger suite runs on every backend: SQLite always, PostgreSQL when
``TAMC_TEST_POSTGRES_URL`` names a server (CI sets it; locally it is skipped, with the reason shown)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from city import SPEED, SmallMarket
from sqlalchemy import create_engine, text

from core.clock import ScaledClock
from hub.broker import RunningBroker
from ledger import Ledger
from memory import MemoryConfig, MemoryStore

PG_URL = os.environ.get("TAMC_TEST_POSTGRES_URL", "")
IN_CI = bool(os.environ.get("CI"))

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not PG_URL, reason="PostgreSQL not configured: set TAMC_TEST_POSTGRES_URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        ],
    ),
]


def _with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ledger_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of the backend: a new SQLite file, or a new PostgreSQL schema."""
    if backend == "sqlite":
        # On tmpfs when there is one: the same SQLite and WAL, without waiting on fsync per commit.
        folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path
        try:
            yield f"sqlite:///{folder / 'ledger.db'}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    if IN_CI and not PG_URL:
        pytest.fail("CI must test PostgreSQL: set TAMC_TEST_POSTGRES_URL")
    schema = f"tamc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _with_schema(PG_URL, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    book = Ledger(ledger_url)
    yield book
    book.close()


@pytest.fixture
def funded(ledger: Ledger) -> Callable[..., Ledger]:
    """Open wallets and mint them money: ``funded(alice=10_000_000, bob=0)``."""

    def fund(**balances: int) -> Ledger:
        for name, amount in balances.items():
            ledger.open_account(name)
            if amount:
                ledger.mint(name, amount, key=f"fund-{name}")
        return ledger

    return fund


# -- the hub: a real broker, started by the tests on a free port --------------------------------

BROKER_CHOICE = os.environ.get("TAMC_TEST_BROKER", "auto")
"""``auto`` (mosquitto when installed, else the embedded amqtt broker), ``mosquitto`` or ``embedded``."""


def broker_kind() -> str:
    from hub.broker import find_mosquitto

    if BROKER_CHOICE != "auto":
        return BROKER_CHOICE
    return "mosquitto" if find_mosquitto() else "embedded"


def pytest_report_header(config: pytest.Config) -> str:
    from hub.broker import find_mosquitto

    kind = broker_kind()
    where = f" ({find_mosquitto()})" if kind == "mosquitto" else " (amqtt, in process: mosquitto is not installed)"
    return f"hub tests run on broker: {kind}{where}"


@pytest.fixture(scope="session")
def broker() -> Iterator[RunningBroker]:
    """One private broker for the session, on a free loopback port with its own config: mosquitto
    with authentication and TAMC's topic ACLs on (``broker.admit(name, role)`` gives a participant
    its URL), or the embedded one where mosquitto is missing (no authentication there)."""
    from hub.broker import start_broker

    kind = broker_kind()
    if IN_CI and kind != "mosquitto":
        pytest.fail("CI must run the hub tests on mosquitto: .ci/run installs it")
    with start_broker(kind) as running:  # type: ignore[arg-type]
        yield running


def on_broker(broker: RunningBroker) -> dict[str, Any]:
    """``MarketConfig`` fields for a city on the session's broker: each participant its own user."""
    return {"broker": broker.url, "broker_home": broker.home}


def broker_args(broker: RunningBroker) -> list[str]:
    """The same as ``tamc demo`` options."""
    return ["--broker", broker.url, *(["--broker-home", str(broker.home)] if broker.home else [])]


@pytest.fixture
def shm_ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A SQLite ledger for market tests (file-backed, so other processes can share it)."""
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path
    book = Ledger(f"sqlite:///{folder / 'ledger.db'}")
    yield book
    book.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def memory_store(tmp_path: Path) -> Iterator[MemoryStore]:
    """An embedded chromadb memory store in the test's own folder (background writes flushed fast)."""
    store = MemoryStore(MemoryConfig(path=tmp_path / "memory", write_delay_s=0.02))
    yield store
    store.close()


@pytest.fixture
def city(broker: RunningBroker, shm_ledger: Ledger) -> Iterator[SmallMarket]:
    """A market on the test broker and a tmpfs ledger; everything in it is stopped afterwards."""
    c = SmallMarket(broker, shm_ledger)
    yield c
    c.close()


@pytest.fixture
def live_city(broker: RunningBroker, shm_ledger: Ledger) -> Iterator[SmallMarket]:
    """The same market on a scaled real-time clock: for what must be shown in real time (a model
    answering against a real deadline)."""
    c = SmallMarket(broker, shm_ledger, clock=ScaledClock(SPEED))
    yield c
    c.close()


@pytest.fixture(autouse=True, scope="session")
def _no_real_models() -> Iterator[None]:
    """No test reaches a hosted model: requests from real model classes are refused unless a test
    lifts the ban for the local stand-in, and no provider key or endpoint leaks in from the shell."""
    from pydantic_ai import models

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GROQ_API_KEY", "TAMC_MODEL",
                 "TAMC_MODEL_BASE_URL", "TAMC_MODEL_API_KEY"):
        os.environ.pop(name, None)
    models.ALLOW_MODEL_REQUESTS = False
    yield


# -- the server: a running city with its API, on a free port -------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """``tamc serve`` as a user runs it: a small city (its own broker and ledger) sped up 600×,
    the API and the cockpit on uvicorn on a free port, and the demo's logins."""
    from market.config import MarketConfig
    from server.runner import serve

    config = MarketConfig(machines=4, hours=500, clock="scaled", speed=600, seed=7, memory="off", life=False,
                          telemetry_every_s=0.25, bid_window_s=0.3 * 600, accept_window_s=0.4 * 600, drain_h=2 * 600 / 3600,
                          progress_steps=4, data_dir=tmp_path_factory.mktemp("served"))
    with serve(config, port=0) as s:  # the server binds a free port itself, before the city starts
        yield s
