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
    city.hub("governance").send(topics.governance(node.id), notice, Identity.generate())
    city.settle()
    assert node.profile.policy.price_floor == floor  # read from the ledger when the notice came

    requester.post(job("floor-2"), reserve=500_000_000, value=600_000_000)
    second = city.wait(2)[1]
    assert second.outcome == "paid" and second.price is not None and second.price >= floor
    assert gov.execute(p.id).replayed  # and executing again does nothing
