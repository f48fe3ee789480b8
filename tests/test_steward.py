"""The steward's life-cycle rules against the jobs left unfilled: a machine losing money does not
park while calls it could have served at a profit went unanswered in its territory, a parked one
resumes as soon as one does, and a child is spawned only for work nobody does."""

from __future__ import annotations

from agents.steward import Books, RegionDemand, UnfilledCall, review, servable
from ledger.charter import Charter
from ledger.proposals import ProposalKind, Standing
from machines import JobSpec, load_profiles

PRUSA = load_profiles()["prusa-01"]
CHARTER = Charter(review_h=8)
UNIT = 1_000_000


def call(job_id: str, *, hour: float = 5.0, reserve: int = 9 * UNIT, **changes: object) -> UnfilledCall:
    spec = {"id": job_id, "kind": "printer_3d", "capability": "print", "region": "north", "deadline_h": 8, "material": "PLA",
            "size_mm": (80, 60, 40), "amount": 40, **changes}
    return UnfilledCall(job=JobSpec.model_validate(spec), reserve=reserve, hour=hour)


def kinds(status: str, net: int, unfilled: tuple[UnfilledCall, ...], *, since_h: float = 0.0, observed_h: float = 8.0,
          wallet: int = 100 * UNIT) -> list[ProposalKind]:
    books = Books(wear_pct=5.0, wallet=wallet, reserve=0, net=net, observed_h=observed_h)
    demand = {"north": RegionDemand(calls=10, machines=2, unfilled=unfilled), "south": RegionDemand(calls=10, machines=2)}
    standing = Standing(machine_id=PRUSA.id, status=status)  # type: ignore[arg-type]
    return [d.kind for d in review(PRUSA, standing, CHARTER, books, demand, period=1, since_h=since_h)]


def test_only_calls_it_could_serve_at_a_profit_count() -> None:
    demand = {"north": RegionDemand(unfilled=(
        call("ok"),
        call("under-cost", reserve=UNIT // 2),  # the reserve does not cover its cost
        call("nylon", material="NYLON"),  # not loaded
        call("too-big", size_mm=(400, 400, 400)),
        call("too-soon", deadline_h=0.5),  # two hours of printing
        call("before", hour=1.0),  # posted before it parked
        call("elsewhere", region="east"),
    ))}
    assert [c.job.id for c in servable(PRUSA, demand, since_h=2.0)] == ["ok"]


def test_losing_money_parks_only_when_nothing_it_could_do_went_unanswered() -> None:
    assert ProposalKind.PARK in kinds("active", -20 * UNIT, ())
    assert ProposalKind.PARK not in kinds("active", -20 * UNIT, (call("j-left"),))
    assert ProposalKind.PARK in kinds("active", -20 * UNIT, (call("j-cheap", reserve=UNIT // 2),))


def test_a_parked_machine_resumes_when_work_goes_unanswered_after_it_parked() -> None:
    # parked two hours ago: too soon for the period's demand to say anything, not for a job left undone
    assert kinds("parked", -5 * UNIT, (call("j-left", hour=5.0),), since_h=4.0, observed_h=2.0) == [ProposalKind.RESUME]
    assert kinds("parked", -5 * UNIT, (call("j-old", hour=3.0),), since_h=4.0, observed_h=2.0) == []


def test_a_child_is_spawned_only_for_work_nobody_does() -> None:
    rich = 3_000 * UNIT
    assert ProposalKind.SPAWN not in kinds("active", 50 * UNIT, (), wallet=rich)
    assert ProposalKind.SPAWN in kinds("active", 50 * UNIT, (call("j-left"),), wallet=rich)
