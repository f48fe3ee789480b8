"""Governance reaches the bidding path over the real broker: an executed price-floor proposal
changes the next bid, whoever executed it and in whichever process."""

from __future__ import annotations

from city import SmallMarket, job, printer

from hub import topics
from hub.messages import GovernanceNotice
from ledger import Governance, Identity, sign_ballot


def test_an_executed_proposal_changes_the_next_bids_floor(city: SmallMarket) -> None:
    gov = Governance(city.ledger)
    node = city.machine(printer("prusa-floor", 2000), governance=gov)
    alice = Identity.generate()
    city.ledger.bind_owner("holder:alice", alice.did)
    requester = city.open_requester()
    requester.post(job("floor-1"), reserve=500_000_000, value=600_000_000)
    (first,) = city.wait(1)
    assert first.outcome == "paid" and first.price is not None
    floor = first.price * 3

    gov.register(node.id, region="north")
    p = gov.open(node.id, "pricing", "A higher floor", key="floor", opened_by="holder:alice", payload={"price_floor": floor})
    gov.vote(sign_ballot(alice, p.id, "holder:alice", "yes"))  # 60 of 100 units: settled
    assert gov.close(p.id).state == "passed"
    assert gov.execute(p.id).state == "done"
    notice = GovernanceNotice(machine_id=node.id, proposal_id=p.id, kind="pricing", state="executed")
    city.hub("governance", role="console").send(topics.governance(node.id), notice, Identity.generate())
    city.settle()
    assert node.profile.policy.price_floor == floor  # read from the ledger when the notice came

    requester.post(job("floor-2"), reserve=500_000_000, value=600_000_000)
    second = city.wait(2)[1]
    assert second.outcome == "paid" and second.price is not None and second.price >= floor
    assert gov.execute(p.id).replayed  # and executing again does nothing


def park(city: SmallMarket, gov: Governance, machine_id: str, holder: Identity) -> None:
    """The holders park the machine (a passed, executed proposal) and tell it so."""
    gov.register(machine_id, region="north")
    p = gov.open(machine_id, "park", f"Park {machine_id}", key=f"park-{machine_id}", opened_by="holder:alice")
    gov.vote(sign_ballot(holder, p.id, "holder:alice", "yes"))
    assert gov.close(p.id).state == "passed" and gov.execute(p.id).state == "done"
    notice = GovernanceNotice(machine_id=machine_id, proposal_id=p.id, kind="park", state="executed")
    city.hub(f"gov-{machine_id}", role="console").send(topics.governance(machine_id), notice, Identity.generate())
    city.settle()


def test_a_parked_machine_stands_by_for_work_the_active_ones_leave(city: SmallMarket) -> None:
    """Parked, a machine hears its territory's calls and bids at its standby premium: an active
    machine's bid wins, and a call no active machine can take is still served (parked, it serves no
    territory in its presence, so the requester does not wait for it)."""
    gov = Governance(city.ledger)
    parked = city.machine(printer("prusa-parked", 2000), governance=gov)
    active = city.machine(printer("prusa-active", 2000))
    alice = Identity.generate()
    city.ledger.bind_owner("holder:alice", alice.did)
    park(city, gov, "prusa-parked", alice)
    assert parked.standing == "parked"
    requester = city.open_requester()
    requester.post(job("sb-both", amount=80), reserve=500_000_000, value=600_000_000)
    [both] = city.wait(1)
    # the active machine was everyone serving the job: bidding closed on its bid, the standby bid aside
    assert both.outcome == "paid" and both.machine_id == "prusa-active"
    [standby] = [r for r in parked.bid_history() if r.job_id == city.jid("sb-both")]
    [plain] = [r for r in active.bid_history() if r.job_id == city.jid("sb-both")]
    assert standby.price is not None and plain.price is not None and standby.price >= plain.price * 1.24
    assert "parked: +25% standby premium" in standby.reason
    active.stop()
    city.settle()
    requester.post(job("sb-left", amount=80), reserve=500_000_000, value=600_000_000)
    left = city.wait(2)[1]
    assert left.outcome == "paid" and left.machine_id == "prusa-parked"
    assert parked.standing == "parked" and city.ledger.audit() == []
