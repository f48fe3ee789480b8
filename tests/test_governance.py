"""The machine mini-DAO in the ledger: signed votes weighted at opening, the charter's decisions,
execution exactly once, and payouts exact to the micro-unit through a fab-cell DAO. Runs on every
ledger backend (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.clock import SimClock
from core.errors import ExecutionFailed, GovernanceError, VoteRefused
from ledger import Charter, Governance, Identity, Ledger, machine_wallet, maintenance_budget, reserve, sign_ballot
from ledger.models import ISSUANCE, MONEY


class Owners:
    """Holders with keys bound to their accounts, and a machine with shares issued to them."""

    def __init__(self, ledger: Ledger, gov: Governance) -> None:
        self.ledger, self.gov = ledger, gov
        self.keys: dict[str, Identity] = {}

    def holder(self, account: str) -> str:
        self.keys[account] = Identity.generate()
        self.ledger.open_account(account, owner=self.keys[account].did)
        return account

    def machine(self, machine_id: str, shares: dict[str, int], *, charter: Charter | None = None, cash: int = 0) -> str:
        self.keys[machine_wallet(machine_id)] = identity = Identity.generate()
        self.ledger.open_account(machine_wallet(machine_id), owner=identity.did)
        self.ledger.open_account(reserve(machine_id))
        for account in shares:
            if account not in self.keys:
                self.holder(account)
        self.ledger.issue_shares(machine_id, shares, key=f"shares:{machine_id}")
        self.gov.register(machine_id, region="north", charter=charter)
        if cash:
            self.ledger.mint(machine_wallet(machine_id), cash, key=f"cash:{machine_id}")
        return machine_id

    def vote(self, proposal_id: str, account: str, choice: str) -> object:
        return self.gov.vote(sign_ballot(self.keys[account], proposal_id, account, choice))  # type: ignore[arg-type]


class Crash(Exception):
    pass


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def owners(ledger: Ledger, clock: SimClock) -> Owners:
    return Owners(ledger, Governance(ledger, clock=clock))


def test_votes_weigh_the_shares_held_when_the_proposal_opened(owners: Owners, ledger: Ledger) -> None:
    m = owners.machine("prusa-a", {"holder:alice": 60, "holder:bob": 40})
    p = owners.gov.open(m, "pricing", "Raise the floor", key="k1", opened_by="holder:bob", payload={"price_floor": 5_000_000})
    ledger.transfer_shares(m, "holder:alice", "holder:bob", 50, key="sell")  # bob buys after opening
    tally = owners.vote(p.id, "holder:alice", "yes")
    assert (tally.yes, tally.total) == (60, 100)  # alice still votes 60, her units at opening
    tally = owners.vote(p.id, "holder:bob", "no")
    assert (tally.yes, tally.no) == (60, 40)


def test_a_recast_replaces_the_earlier_vote(owners: Owners) -> None:
    m = owners.machine("prusa-b", {"holder:alice": 30, "holder:bob": 30, "holder:carol": 40})
    p = owners.gov.open(m, "park", "Park it", key="k2", opened_by="holder:alice")
    owners.vote(p.id, "holder:alice", "yes")
    tally = owners.vote(p.id, "holder:alice", "no")
    assert (tally.yes, tally.no, tally.voters) == (0, 30, {"holder:alice": "no"})


def test_refused_ballots_say_why_and_change_nothing(owners: Owners, clock: SimClock) -> None:
    m = owners.machine("prusa-c", {"holder:alice": 50, "holder:bob": 50})
    p = owners.gov.open(m, "park", "Park it", key="k3", opened_by="holder:alice")
    mallory = owners.holder("holder:mallory")
    with pytest.raises(VoteRefused, match="held no shares"):
        owners.vote(p.id, mallory, "yes")
    unsigned = {"proposal_id": p.id, "holder": "holder:alice", "choice": "yes", "voter": owners.keys["holder:alice"].did}
    with pytest.raises(VoteRefused, match="unsigned"):
        owners.gov.vote(unsigned)
    forged = sign_ballot(owners.keys[mallory], p.id, "holder:alice", "yes")  # mallory signs for alice
    with pytest.raises(VoteRefused, match="owned by"):
        owners.gov.vote(forged)
    tampered = {**sign_ballot(owners.keys["holder:alice"], p.id, "holder:alice", "no"), "choice": "yes"}
    with pytest.raises(VoteRefused, match="signature does not match"):
        owners.gov.vote(tampered)
    assert owners.gov.tally(p.id).cast == 0
    clock.advance(hours=49)  # past the charter's 48 h window
    with pytest.raises(VoteRefused, match="closed"):
        owners.vote(p.id, "holder:alice", "yes")
    assert owners.gov.close(p.id).state == "rejected"  # nobody voted: no quorum


def test_the_charter_decides_quorum_threshold_and_window(owners: Owners, clock: SimClock) -> None:
    charter = Charter(quorum_bps=6000, threshold_bps=5000, window_h=10)
    m = owners.machine("prusa-d", {"holder:alice": 30, "holder:bob": 30, "holder:carol": 40}, charter=charter)
    p = owners.gov.open(m, "resume", "Back to work", key="k4", opened_by="holder:alice")
    assert p.closes_at - p.opened_at == timedelta(hours=10)
    owners.vote(p.id, "holder:alice", "yes")
    assert owners.gov.close(p.id).state == "open"  # 30 % turnout, undecided
    clock.advance(hours=10)
    closed = owners.gov.close(p.id)
    assert closed.state == "rejected"  # all yes, but 30 % < the 60 % quorum
    assert [a.action for a in owners.gov.audit(m, proposal_id=p.id)] == ["opened", "vote", "rejected"]

    q = owners.gov.open(m, "resume", "Back to work, again", key="k5", opened_by="holder:alice")
    owners.vote(q.id, "holder:carol", "yes")
    owners.vote(q.id, "holder:alice", "yes")
    assert owners.gov.close(q.id).state == "passed"  # 70 yes of 100: settled before the window ends
    r = owners.gov.open(m, "resume", "Tie", key="k6", opened_by="holder:alice")
    owners.vote(r.id, "holder:alice", "yes")
    owners.vote(r.id, "holder:bob", "no")
    clock.advance(hours=10)
    assert owners.gov.close(r.id).state == "rejected"  # 30 against 30 is not more than half


def test_unknown_kind_or_bad_payload_is_a_clear_error(owners: Owners) -> None:
    m = owners.machine("prusa-e", {"holder:alice": 1})
    with pytest.raises(GovernanceError, match="no proposal kind 'coup'"):
        owners.gov.open(m, "coup", "Take over", key="x", opened_by="holder:alice")
    with pytest.raises(GovernanceError, match="sets margin_bps, price_floor or both"):
        owners.gov.open(m, "pricing", "Nothing", key="y", opened_by="holder:alice", payload={})
    with pytest.raises(GovernanceError, match="budget"):
        owners.gov.open(m, "maintenance", "Free money", key="z", opened_by="holder:alice", payload={"budget": 1.5})
    assert owners.gov.proposals(m) == []


def _pass(owners: Owners, m: str, kind: str, payload: dict[str, object], key: str) -> str:
    p = owners.gov.open(m, kind, f"{kind} {key}", key=key, opened_by="holder:alice", payload=payload)
    for account in p.weights:
        owners.vote(p.id, account, "yes")
    assert owners.gov.close(p.id).state == "passed"
    return p.id


def test_execution_happens_once_across_retries_and_restarts(owners: Owners, ledger: Ledger) -> None:
    m = owners.machine("prusa-f", {"holder:alice": 100}, cash=500_000_000)
    ledger.transfer(machine_wallet(m), reserve(m), 120_000_000, key="wear")
    pid = _pass(owners, m, "maintenance", {"budget": 200_000_000}, "maint")
    first = owners.gov.execute(pid)
    again = owners.gov.execute(pid)
    second = Ledger(ledger.url)  # as a new process would, on the same database
    restarted = Governance(second).execute(pid)
    second.close()
    assert first.state == "done" and not first.replayed and again.replayed and restarted.replayed
    assert ledger.balance(maintenance_budget(m)) == 200_000_000  # the reserve's 120 first, then 80 from the wallet
    assert (ledger.balance(reserve(m)), ledger.balance(machine_wallet(m))) == (0, 300_000_000)
    assert [a.action for a in owners.gov.audit(m, proposal_id=pid)].count("executed") == 1


def test_an_execution_cut_short_finishes_on_retry_without_doubling(owners: Owners, ledger: Ledger,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    parent = owners.machine("prusa-g", {"holder:alice": 70, "holder:bob": 30}, cash=2_000_000_000)
    child = Identity.generate()
    pid = _pass(owners, parent, "spawn", {"child_id": "prusa-g-c1", "child_did": child.did, "region": "south",
                                          "purchase": 1_100_000_000, "capital": 100_000_000}, "spawn")
    real = owners.gov._run_step
    calls = []

    def crash_on_shares(step: dict[str, object], *, key: str) -> None:
        calls.append(step["op"])
        if step["op"] == "shares" and calls.count("shares") == 1:
            raise Crash("the process dies here")  # not a ledger refusal: nothing is marked
        real(step, key=key)

    monkeypatch.setattr(owners.gov, "_run_step", crash_on_shares)
    with pytest.raises(Crash):
        owners.gov.execute(pid)
    assert owners.gov.get(pid).state == "passed"
    done = owners.gov.execute(pid)  # the retry follows the stored plan
    assert done.state == "done" and owners.gov.get(pid).state == "executed"
    assert ledger.balance(machine_wallet(parent)) == 800_000_000  # paid once: 2000 - 1100 - 100
    assert ledger.balance(machine_wallet("prusa-g-c1")) == 100_000_000
    assert ledger.balance("supplier:machines") == 1_100_000_000
    assert ledger.cap_table("prusa-g-c1") == {machine_wallet(parent): 100}  # the charter's default: the parent owns it
    assert ledger.account(machine_wallet("prusa-g-c1")).owner == child.did
    standing = owners.gov.standing("prusa-g-c1")
    assert (standing.parent, standing.region, standing.status) == (parent, "south", "active")
    assert ledger.audit() == []


def test_a_machine_votes_with_the_shares_it_holds_of_its_child(owners: Owners, ledger: Ledger) -> None:
    parent = owners.machine("prusa-h", {"holder:alice": 100}, cash=1_500_000_000)
    pid = _pass(owners, parent, "spawn", {"child_id": "prusa-h-c1", "child_did": Identity.generate().did, "region": "north",
                                          "purchase": 1_000_000_000, "capital": 100_000_000}, "spawn-h")
    owners.gov.execute(pid)
    p = owners.gov.open("prusa-h-c1", "park", "Park the child", key="park-child", opened_by="machine:prusa-h-c1")
    assert owners.gov.tally(p.id).total == 100
    tally = owners.vote(p.id, machine_wallet(parent), "yes")  # signed with the parent machine's own key
    assert tally.yes == 100 and owners.gov.close(p.id).state == "passed"


def test_a_failed_execution_is_marked_and_moves_nothing(owners: Owners, ledger: Ledger) -> None:
    m = owners.machine("prusa-i", {"holder:alice": 100}, cash=10_000_000)
    pid = _pass(owners, m, "relocate", {"region": "south", "cost": 50_000_000}, "move")
    with pytest.raises(ExecutionFailed, match="could not be carried out"):
        owners.gov.execute(pid)
    assert owners.gov.get(pid).state == "failed"
    assert ledger.balance(machine_wallet(m)) == 10_000_000 and owners.gov.standing(m).region == "north"
    with pytest.raises(GovernanceError, match="only a passed proposal"):
        owners.gov.execute(pid)


def test_policy_proposals_change_the_standing_in_order(owners: Owners) -> None:
    m = owners.machine("prusa-j", {"holder:alice": 100})
    owners.gov.execute(_pass(owners, m, "pricing", {"margin_bps": 3000, "price_floor": 4_000_000}, "p1"))
    owners.gov.execute(_pass(owners, m, "pricing", {"price_floor": 6_000_000}, "p2"))
    owners.gov.execute(_pass(owners, m, "payout", {"retain_bps": 5000}, "p3"))
    owners.gov.execute(_pass(owners, m, "park", {}, "p4"))
    s = owners.gov.standing(m)
    assert s.policy == {"margin_bps": 3000, "price_floor": 6_000_000} and s.retain_bps == 5000 and s.status == "parked"


def test_revenue_and_salvage_pay_out_exactly_through_a_fab_cell_dao(owners: Owners, ledger: Ledger) -> None:
    cell = "dao:fab-cell"
    for member in ("holder:erin", "holder:frank", "holder:grace"):
        owners.holder(member)
    owners.holder(cell)
    ledger.issue_shares(cell, {"holder:erin": 1, "holder:frank": 1, "holder:grace": 1}, key="shares:cell")
    a = owners.machine("prusa-k", {"holder:alice": 50, "holder:bob": 30, cell: 20}, cash=0)
    b = owners.machine("prusa-l", {"holder:carol": 70, cell: 30}, cash=0)
    from ledger.payout import pay_holders

    ledger.mint(machine_wallet(a), 1_000_001, key="job-a")
    ledger.mint(machine_wallet(b), 333_334, key="job-b")
    pay_holders(ledger, a, machine_wallet(a), 1_000_001, key="split:a")
    pay_holders(ledger, b, machine_wallet(b), 333_334, key="split:b")
    pay_holders(ledger, a, machine_wallet(a), 1_000_001, key="split:a")  # a retry pays nothing more
    money = ledger.balances(MONEY)
    assert money["holder:alice"] == 500_001 and money["holder:bob"] == 300_000  # 1,000,001 × 50 %, 30 %, remainder to the largest
    assert money.get(cell, 0) == 0  # the cell passed its 200,000 + 100,000 on
    members = [money["holder:erin"], money["holder:frank"], money["holder:grace"]]
    assert members == [66_667 + 33_334, 66_667 + 33_333, 66_666 + 33_333]  # each split exact; ties to the smaller id
    assert money["holder:carol"] == 233_334

    # salvage: the machine is sold, its reserve swept, everything paid out to holders
    ledger.mint(machine_wallet(a), 7_000_003, key="cash-a")
    ledger.transfer(machine_wallet(a), reserve(a), 3_000_000, key="wear-a")
    before = ledger.balances(MONEY)
    pid = _pass(owners, a, "retire", {"salvage": 10_000_000}, "retire-a")
    owners.gov.execute(pid)
    after = ledger.balances(MONEY)
    paid = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    assert after[machine_wallet(a)] == 0 and after[reserve(a)] == 0
    assert paid["holder:alice"] + paid["holder:bob"] + paid["holder:erin"] + paid["holder:frank"] + paid["holder:grace"] == 17_000_003
    assert paid["holder:alice"] == 8_500_001 and paid["holder:bob"] == 5_100_001
    assert paid[ISSUANCE] == -10_000_000  # the salvage came from outside: the buyer
    assert owners.gov.standing(a).status == "retired" and ledger.audit() == []


def test_a_collective_votes_as_one_holder_by_its_members_decision(owners: Owners, ledger: Ledger) -> None:
    from ledger.collective import Collective

    cell = owners.holder("dao:cell")
    for member in ("holder:erin", "holder:frank", "holder:grace"):
        owners.holder(member)
    ledger.issue_shares(cell, {"holder:erin": 2, "holder:frank": 1, "holder:grace": 1}, key="shares:cell")
    owners.gov.register(cell)
    m = owners.machine("prusa-m", {"holder:alice": 40, cell: 60})
    outer = owners.gov.open(m, "park", "Park it", key="park-m", opened_by="holder:alice")
    collective = Collective(cell, owners.keys[cell], owners.gov)
    inner = collective.ask(outer)
    assert inner is not None and inner.kind.value == "delegate" and collective.ask(outer) == inner  # asked once
    assert collective.cast(inner) is None  # the members have not decided yet
    owners.vote(inner.id, "holder:frank", "no")
    assert owners.gov.close(inner.id).state == "open"  # erin's 2 units could still carry it
    owners.vote(inner.id, "holder:grace", "no")  # now even erin's yes would be only half
    tally = collective.cast(inner)
    assert tally is not None and tally.voters == {cell: "no"} and tally.no == 60
    assert owners.gov.close(outer.id).state == "rejected"  # the cell's 60 against alice's silence
