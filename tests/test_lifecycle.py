"""The TradeNet life cycle in a seeded market on the real broker and ledger: one machine spawns, one
relocates, one dies, one hires its maintenance out to a technician — and the books add up."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import on_broker

from core.money import MICROS_PER_UNIT
from hub.broker import RunningBroker
from ledger import Governance, Ledger, machine_wallet, maintenance_budget, reserve
from ledger.charter import Charter
from machines import load_profiles
from machines.regions import DEFAULT_REGIONS
from market.city import simulate
from market.config import MarketConfig
from market.demand import FLAT, DemandModel, generate_jobs
from market.lifecycle import FIXED_COSTS, LifeConfig
from market.report import MarketReport

PROFILES = load_profiles()
UNIT = MICROS_PER_UNIT


def _printer(machine_id: str, region: str) -> object:
    base = PROFILES["prusa-01"]
    return base.model_copy(update={"id": machine_id, "region": region,
                                   "policy": base.policy.model_copy(update={"territory": (region,)})})


@pytest.fixture(scope="module")
def life(broker: RunningBroker, tmp_path_factory: pytest.TempPathFactory) -> MarketReport:
    rich, lost = _printer("prusa-rich", "north"), _printer("prusa-lost", "south")
    laser = PROFILES["glowforge-01"]
    doomed = laser.model_copy(update={"id": "laser-doomed", "region": "south",
                                      "policy": laser.policy.model_copy(update={"territory": ("south",)})})
    # print work in the north only (enough for four printers), none in the south, no laser work anywhere
    north = [rich] + [_printer(f"prusa-x{i}", "north") for i in range(3)]
    demand = generate_jobs(north, DEFAULT_REGIONS, 14, seed=5, model=DemandModel(load=1.0, hourly=FLAT), prefix="life-")
    config = MarketConfig(seed=5, hours=14, machines=3, **on_broker(broker), data_dir=tmp_path_factory.mktemp("life"),
                          memory="off",
                          life_config=LifeConfig(tick_h=0.5, charter=Charter(window_h=1, review_h=6, grace_days=0.25),
                                                 yes_bps=10_000))
    return simulate(config, fleet=[rich, lost, doomed], requests=demand,  # type: ignore[list-item]
                      savings={"prusa-rich": 2000 * UNIT, "prusa-lost": 300 * UNIT, "laser-doomed": UNIT // 2},
                      wear={"prusa-rich": 61.0})


def _machine(report: MarketReport, machine_id: str):  # type: ignore[no-untyped-def]
    return next(m for m in report.machines if m.machine_id == machine_id)


def test_one_spawns_one_relocates_one_dies(life: MarketReport) -> None:
    assert life.life is not None
    events = {(e.machine_id, e.event) for e in life.life.events}
    assert ("prusa-rich-c1", "birth") in events and life.life.parents == {"prusa-rich-c1": "prusa-rich"}
    assert ("prusa-lost", "move") in events and _machine(life, "prusa-lost").region == "north"
    assert ("laser-doomed", "death") in events and _machine(life, "laser-doomed").status == "retired"
    child = _machine(life, "prusa-rich-c1")
    assert child.region == "north" and child.status == "active"
    assert life.paid > 0 and life.double_awards == 0
    assert life.life.births >= 1 and life.life.moves >= 1 and life.life.deaths >= 1


def test_their_ledgers_are_consistent_afterwards(life: MarketReport) -> None:
    ledger = Ledger(life.ledger_url)
    gov = Governance(ledger)
    try:
        assert ledger.audit() == []  # every posting balanced, every asset sums to zero, nothing negative
        # the child: bought from the parent's wallet, funded with the charter's capital, owned by its parent
        assert ledger.cap_table("prusa-rich-c1") == {machine_wallet("prusa-rich"): 100}
        assert ledger.balance("supplier:machines") == PROFILES["prusa-01"].purchase_price
        assert ledger.account(machine_wallet("prusa-rich-c1")).owner is not None
        assert gov.standing("prusa-rich-c1").parent == "prusa-rich"
        # the move was paid once, and the machine now stands in the north
        assert ledger.balance("supplier:moving") == Charter().relocate_cost
        assert gov.standing("prusa-lost").region == "north"
        # the dead machine: its accounts emptied into its holders' hands, salvage included
        dead = "laser-doomed"
        assert (ledger.balance(machine_wallet(dead)), ledger.balance(reserve(dead))) == (0, 0)
        (death,) = [p for p in gov.proposals(dead) if p.kind.value == "retire"]
        assert death.opened_by == "charter" and death.state == "executed"
        salvage = death.payload["salvage"]
        paid_out = sum(line.amount for h in death.weights for line in ledger.statement(h, limit=None) if "retired" in line.memo)
        assert salvage > 0 and paid_out >= salvage
        # every executed proposal was executed once
        for p in gov.proposals(state="executed"):
            assert [a.action for a in gov.audit(proposal_id=p.id)].count("executed") == 1
        assert ledger.balance(FIXED_COSTS) > 0
    finally:
        ledger.close()


def test_a_machine_hires_its_maintenance_out_and_pays_from_the_budget(life: MarketReport) -> None:
    assert life.life is not None
    kinds = [e.event for e in life.life.events if e.machine_id == "prusa-rich"]
    assert "maintenance" in kinds and "maintained" in kinds and life.life.maintenances == 1
    assert _machine(life, "prusa-rich").wear_pct < 61.0  # the technician's job reset its wear
    ledger = Ledger(life.ledger_url)
    gov = Governance(ledger)
    try:
        # the holders' simulated votes hash the title, which carries the wear when the machine asked: an earlier
        # request may have been voted down (the machine asks again the next period), one was executed
        (maint,) = [p for p in gov.proposals("prusa-rich") if p.kind.value == "maintenance" and p.state == "executed"]
        price = PROFILES["prusa-01"].purchase_price
        assert maint.payload["wear_pct"] >= 61.0
        assert maint.payload["budget"] == pytest.approx(price * maint.payload["wear_pct"] / 100, rel=1e-5)  # what the wear is worth
        technician = ledger.balance(machine_wallet("tech-south")) + ledger.balance(machine_wallet("tech-north"))
        assert 0 < technician < maint.payload["budget"]  # paid its quote, not the whole budget
        assert ledger.balance(maintenance_budget("prusa-rich")) == 0  # the rest went back to the wallet
    finally:
        ledger.close()


def test_a_machine_without_the_life_cycle_keeps_paying_everything_out(broker: RunningBroker, tmp_path: Path) -> None:
    config = MarketConfig(seed=3, hours=2, machines=2, **on_broker(broker), data_dir=tmp_path, memory="off", life=False)
    report = simulate(config)
    assert report.life is None and all(m.status == "active" for m in report.machines)
    ledger = Ledger(report.ledger_url)
    try:
        assert all(ledger.balance(machine_wallet(m.machine_id)) == 0 for m in report.machines)
    finally:
        ledger.close()
