"""The rule engine: prices computed by hand for each kind, and each constraint's decline."""

from __future__ import annotations

from typing import Any

import pytest

from machines import JobSpec, MachineProfile, Policy, load_profiles
from pricing.rules import MachineStatus, MarketContext, decide

PROFILES = load_profiles()


def job(**fields: Any) -> JobSpec:
    return JobSpec.model_validate(fields)


def with_policy(machine: str, **policy: Any) -> MachineProfile:
    p = PROFILES[machine]
    return p.model_copy(update={"policy": Policy.model_validate({**p.policy.model_dump(), **policy})})


BOTH = ("south", "north")
PRINT = dict(id="p", kind="printer_3d", capability="print", region="north", deadline_h=24, material="PLA", size_mm=(120, 80, 40), amount=100)
MILL = dict(id="m", kind="cnc_mill", capability="mill", region="north", deadline_h=48, material="aluminium", size_mm=(200, 150, 10), amount=40)
CUT = dict(id="c", kind="laser_cutter", capability="cut", region="south", deadline_h=12, material="plywood", size_mm=(400, 250, 3), amount=60)
RIDE = dict(id="r", kind="car", capability="ride", region="north", deadline_h=2, pickup={"x_km": 2, "y_km": 6}, dropoff={"x_km": 2, "y_km": 36}, passengers=2)
PARCEL = dict(id="d", kind="drone", capability="deliver", region="south", deadline_h=1, pickup={"x_km": 5, "y_km": 3}, dropoff={"x_km": 8, "y_km": 7}, payload_kg=1.2)


def test_printer_price_by_hand() -> None:
    # 100 g PLA at 20 g/h = 5 h. energy 0.12 kW*5 h*0.25 = 0.15; wear 1100*0.01%*5 = 0.55;
    # filament 100*0.025 = 2.50; fixed 2.40*5/8 = 1.50; overhead 5% of 4.70 = 0.235.
    # cost 4.935, +20% = 5.922, rounded up to the cent: 5.93.
    d = decide(PROFILES["prusa-01"], job(**PRINT))
    assert d.action == "bid"
    assert d.cost is not None
    assert d.cost.model_dump() == dict(energy=150_000, wear=550_000, consumables=2_500_000, travel=0, fixed=1_500_000, overhead=235_000)
    assert d.cost.total == 4_935_000
    assert (d.price, d.eta_h) == (5_930_000, 5)
    assert [r.code for r in d.rules] == ["price.margin"]
    assert d.reason.startswith("bid 5.93: cost 4.935 (energy 0.15, wear 0.55, consumables 2.50, fixed 1.50, overhead 0.235)")


def test_cnc_price_by_hand() -> None:
    # 40 cm3 aluminium at 20 cm3/h = 2 h. energy 1.5*2*0.25 = 0.75; wear 4000*0.05%*2 = 4.00;
    # tooling 40*0.15 = 6.00; fixed 8*2/8 = 2.00; overhead 5% of 12.75 = 0.6375; cost 13.3875; +30% = 17.40375 -> 17.41.
    d = decide(PROFILES["shapeoko-01"], job(**MILL))
    assert d.cost is not None and d.cost.total == 13_387_500
    assert (d.price, d.eta_h) == (17_410_000, 2)


def test_laser_price_by_hand() -> None:
    # 60 m of plywood at 30 m/h = 2 h. energy 0.6*2*0.25 = 0.30; wear 6000*0.04%*2 = 4.80;
    # gas and optics 60*0.05 = 3.00; fixed 6*2/8 = 1.50; overhead 5% of 9.60 = 0.48; cost 10.08; +25% = 12.60.
    d = decide(PROFILES["glowforge-01"], job(**CUT))
    assert d.cost is not None and d.cost.total == 10_080_000
    assert (d.price, d.eta_h) == (12_600_000, 2)


def test_car_price_by_hand() -> None:
    # From its rank (2,6) to the pickup: 0 km. 30 km trip at 30 km/h = 1 h. energy 30*0.18*0.25 = 1.35;
    # wear 40000*0.004%*1 = 1.60; fixed 30*1/12 = 2.50; overhead 5% of 5.45 = 0.2725; cost 5.7225; +20% = 6.867 -> 6.87.
    d = decide(PROFILES["taxi-01"], job(**RIDE))
    assert d.cost is not None and d.cost.total == 5_722_500 and d.cost.travel == 0
    assert (d.price, d.eta_h) == (6_870_000, 1)


def test_car_pays_for_the_empty_drive_to_the_pickup() -> None:
    # Standing at (2,0), 6 km from the pickup: 0.2 h and 6*0.18 kWh empty. travel = 1.08*0.25 + 0.2*1.60 = 0.59.
    d = decide(PROFILES["taxi-01"], job(**RIDE), MachineStatus(position={"x_km": 2, "y_km": 0}))
    assert d.cost is not None and d.cost.travel == 590_000
    assert d.eta_h == 1.2


def test_drone_price_by_hand() -> None:
    # Roof (5,1) to pickup (5,3): 2 km empty = 0.04 h; trip (5,3)->(8,7) = 5 km = 0.1 h.
    # energy 5*0.02*0.25 = 0.025; wear 3000*0.1%*0.1 = 0.30; travel 2*0.02*0.25 + 0.04*3.00 = 0.13;
    # fixed 4*0.14/10 = 0.056; overhead 5% of 0.511 = 0.02555; cost 0.53655; +25% = 0.6706875 -> 0.68.
    # the parcel goes from the south to the north: a drone that serves both (the rules check where it flies)
    d = decide(with_policy("drone-01", price_floor="0", territory=BOTH), job(**PARCEL))
    assert d.cost is not None and d.cost.total == 536_550
    assert (d.price, d.eta_h) == (680_000, 0.14)
    # its own floor of 2.00 lifts that
    floored = decide(with_policy("drone-01", territory=BOTH), job(**PARCEL))
    assert floored.price == 2_000_000
    assert [r.code for r in floored.rules] == ["price.margin", "price.floor"]


def test_same_input_same_output() -> None:
    args = (PROFILES["taxi-01"], job(**RIDE), MachineStatus(queue_len=1, queue_hours=0.5), MarketContext(demand_index_bps=13_000))
    assert decide(*args) == decide(*args)


def test_demand_and_backlog_move_the_price() -> None:
    # demand index 1.4 at sensitivity 50% -> x1.20; one job queued adds 5% -> x1.25 on 5.922 = 7.4025 -> 7.41
    busy = decide(PROFILES["prusa-01"], job(**PRINT), MachineStatus(queue_len=1, queue_hours=2), MarketContext(demand_index_bps=14_000))
    assert busy.price == 7_410_000 and busy.eta_h == 7
    assert "price.demand" in [r.code for r in busy.rules]
    # a slack market lowers the price but never below cost
    slack = decide(with_policy("prusa-01", price_floor="0", demand_min_bps=5000), job(**PRINT), market=MarketContext(demand_index_bps=1000))
    assert slack.price == 4_940_000  # max(5.922*0.55, cost 4.935) -> 4.935 rounded up to the cent


def test_ceiling_caps_and_reserve_caps() -> None:
    capped = decide(with_policy("prusa-01", price_ceiling="5.50"), job(**PRINT))
    assert capped.price == 5_500_000 and capped.rules[-1].code == "price.ceiling"
    reserve = decide(PROFILES["prusa-01"], job(**PRINT, max_price="5.00"))
    assert reserve.price == 5_000_000 and reserve.rules[-1].code == "price.reserve"


@pytest.mark.parametrize(
    ("machine", "spec", "status", "code", "words"),
    [
        ("prusa-01", {**PRINT, "kind": "cnc_mill", "capability": "mill"}, None, "decline.capability", "cannot 'mill'"),
        ("prusa-01", {**PRINT, "capability": "engrave"}, None, "decline.capability", "can print"),
        ("prusa-01", {**PRINT, "material": "ABS"}, None, "decline.material", "'ABS' not loaded (have PLA, PETG)"),
        ("prusa-01", {**PRINT, "size_mm": (300, 100, 100)}, None, "decline.capacity", "does not fit"),
        ("drone-01", {**PARCEL, "payload_kg": 3}, None, "decline.capacity", "payload 3 kg exceeds 2.5 kg"),
        ("taxi-01", {**RIDE, "passengers": 5}, None, "decline.capacity", "5 passengers exceed 4 seats"),
        ("prusa-01", PRINT, MachineStatus(queue_len=8), "decline.queue", "queue full (8 of 8"),
        ("prusa-01", {**PRINT, "deadline_h": 4}, None, "decline.deadline", "finish in 5.00 h, deadline is 4 h"),
        ("prusa-01", PRINT, MachineStatus(queue_hours=20), "decline.deadline", "finish in 25.00 h"),
        ("prusa-01", PRINT, MachineStatus(wear_pct=79.98), "decline.wear", "wear would reach 80.03%, limit 80%"),
        ("prusa-01", {**PRINT, "region": "south"}, None, "decline.territory", "'south' is outside territory north"),
        ("drone-far", {**PARCEL, "dropoff": {"x_km": 5, "y_km": 30}}, None, "decline.range", "exceeds the 25.0 km"),
        # labelled for its region, delivered outside it: declined on where it flies, not on the label
        ("drone-01", PARCEL, None, "decline.territory", "the route leaves territory south at (7.40, 6.20) km"),
        ("drone-01", {**PARCEL, "dropoff": {"x_km": 5, "y_km": 30}}, None, "decline.territory", "leaves territory south"),
        ("taxi-01", {**RIDE, "dropoff": {"x_km": 2, "y_km": 400}}, None, "decline.range", "exceeds the 333.3 km of a full battery"),
        ("taxi-01", {**RIDE, "deadline_h": 1.03}, MachineStatus(battery_pct=5), "decline.deadline", "deadline is 1.03 h"),
        ("prusa-01", {**PRINT, "max_price": "4.00"}, None, "decline.reserve", "reserve 4.00 is below our least price 4.935"),
    ],
)
def test_each_constraint_declines_with_its_reason(machine: str, spec: dict, status: MachineStatus | None, code: str, words: str) -> None:
    # drone-far serves a region beyond the map as well: its route can be checked for range only
    profile = with_policy("drone-01", territory=("south", "far")) if machine == "drone-far" else PROFILES[machine]
    d = decide(profile, job(**spec), status)
    assert d.action == "decline" and d.price is None
    assert code in [r.code for r in d.rules]
    assert words in d.reason
    assert d.reason.startswith("decline: ")


def test_ceiling_below_cost_declines() -> None:
    d = decide(with_policy("prusa-01", price_ceiling="4.00"), job(**PRINT))
    assert d.action == "decline" and d.rules[0].code == "decline.ceiling"


def test_territory_policy_widens_the_area() -> None:
    assert decide(PROFILES["taxi-01"], job(**{**RIDE, "region": "centre"})).action == "bid"
    assert decide(PROFILES["taxi-01"], job(**{**RIDE, "region": "south"})).action == "decline"


def test_every_failing_constraint_is_listed() -> None:
    d = decide(PROFILES["prusa-01"], job(**{**PRINT, "material": "ABS", "region": "south"}))
    assert {r.code for r in d.rules} == {"decline.material", "decline.territory"}


def test_vehicle_short_of_charge_charges_first_and_says_so() -> None:
    taxi = PROFILES["taxi-01"]
    d = decide(taxi, JobSpec.model_validate(RIDE), MachineStatus(battery_pct=5))
    # 30 km × 0.18 kWh/km = 5.4 kWh needed, 3 kWh in the battery: 2.4 kWh at 50 kW = 0.048 h, then 1 h of driving
    assert d.action == "bid"
    assert d.eta_h == pytest.approx(1.048, abs=1e-4)
    assert any(r.code == "time.charge" and "charges 3 min first" in r.detail for r in d.rules)


def test_the_least_price_rises_as_planned_hours_fill_the_horizon() -> None:
    # prusa-01: horizon 8 h, demand_max x2.0 -> z0 = 1 / (1 + ln 2) = 0.59; cost 4.935 (5 h of PLA)
    prusa = PROFILES["prusa-01"]
    free = decide(prusa, job(**PRINT), MachineStatus(planned_hours=4.0))  # half full: any price over cost
    assert free.price == 5_930_000 and "price.reserve_capacity" not in [r.code for r in free.rules]
    # 6 h planned: z = 0.75, least = cost x (2e)^0.75 / e = x1.31 = 6.4638 -> 6.47, above the 20 % margin
    busy = decide(prusa, job(**PRINT), MachineStatus(planned_hours=6.0))
    rule = next(r for r in busy.rules if r.code == "price.reserve_capacity")
    assert busy.price == 6_470_000 and "planned 6.0 h of the next 8 h (75% full): least ×1.31" in rule.detail
    assert "keeping hours for work worth more" in busy.reason
    # full: least = demand_max x cost = 9.87; a call reserving 8.00 is turned away, one reserving 12.00 is not
    full = MachineStatus(planned_hours=9.0)
    assert decide(prusa, job(**PRINT), full).price == 9_870_000
    cheap = decide(prusa, job(**PRINT, max_price="8.00"), full)
    assert cheap.action == "decline" and cheap.rules[0].code == "decline.reserve" and "least price 9.87" in cheap.reason
    assert decide(prusa, job(**PRINT, max_price="12.00"), full).price == 9_870_000
    # within the owners' bounds: a ceiling caps it, and an owner may turn the rule off
    assert decide(with_policy("prusa-01", price_ceiling="7.00"), job(**PRINT), full).price == 7_000_000
    assert decide(with_policy("prusa-01", reserve_capacity=False), job(**PRINT), full).price == 5_930_000
