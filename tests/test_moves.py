"""Provisional awards, commitment at start, over the real broker and ledger: a job that has not
started moves to a machine that offers to finish it sooner (the holder releases it first, the
escrow stays, the requester pays once), a started job is kept, forged and replayed move messages
change nothing, and an early cheap job no longer blocks a later valuable one."""

from __future__ import annotations

import pytest
from city import BUDGET, PROFILES, SmallMarket, job, printer

from hub import topics
from hub.envelope import Envelope, seal
from hub.messages import JobEvent, Offer, Release
from ledger import Identity
from machines.profile import MachineProfile

RESERVE, VALUE = 50_000_000, 60_000_000


def pla_only(machine_id: str, margin_bps: int) -> MachineProfile:
    """A Prusa with only PLA loaded: it cannot take a PETG job."""
    base = printer(machine_id, margin_bps)
    assert base.fab is not None
    fab = base.fab.model_copy(update={"materials": {"PLA": base.fab.materials["PLA"]}})
    return base.model_copy(update={"fab": fab})


def started(city: SmallMarket, machine_id: str, job_id: str) -> bool:
    return (machine_id, "started") in city.kinds(job_id)


def busy_with(city: SmallMarket, machine_id: str, job_id: str) -> None:
    """Post a 6 h job and run until ``machine_id`` has started it."""
    assert city.requester is not None
    city.requester.post(job(job_id, amount=120, deadline_h=12), reserve=RESERVE, value=VALUE)
    city.run(3600, stop=lambda: started(city, machine_id, job_id))
    assert started(city, machine_id, job_id)


def watch(city: SmallMarket, job_id: str) -> list[Envelope]:
    """Every envelope on the job's award, offers and events topics, in the order heard."""
    heard: list[Envelope] = []
    hub = city.hub(f"watch-{job_id.rpartition('.')[2]}", role="steward")  # the role that reads offers besides the requester
    for topic in (topics.award(job_id), topics.offers(job_id), topics.events(job_id)):
        hub.subscribe(topic, lambda t, e: heard.append(e))
    city.settle()
    return heard


def test_unstarted_job_moves_to_a_machine_that_finishes_sooner_and_is_paid_once(city: SmallMarket) -> None:
    a = city.machine(printer("prusa-a", 2000))
    b = city.machine(printer("prusa-b", 4000))
    requester = city.open_requester()
    busy_with(city, "prusa-a", city.jid("j-busy"))
    heard = watch(city, city.jid("j-move"))
    # prusa-a is the cheaper bid, but would finish the 4 h job after its 6 h one; prusa-b is free
    requester.post(job("j-move", amount=80, deadline_h=12), reserve=RESERVE, value=VALUE)
    outcomes = {o.job_id: o for o in city.wait(2)}
    moved = outcomes[city.jid("j-move")]
    assert moved.outcome == "paid" and moved.machine_id == "prusa-b" and moved.moves == 1 and moved.takeovers == 0
    assert requester.awards_sent[city.jid("j-move")] == ["prusa-a", "prusa-b"]
    kinds = city.kinds(city.jid("j-move"))
    assert ("prusa-a", "released") in kinds and ("prusa-a", "started") not in kinds
    assert kinds.index(("prusa-a", "released")) < kinds.index(("prusa-b", "accepted"))  # never two holders at once
    assert [k for m, k in kinds if m == "prusa-b"] == ["accepted", "funded", "started", "done", "paid"]
    # the offer, the release and the award in the order the protocol says, each signed by its party
    steps = [(e.type, e.sender) for e in heard if e.type in ("offer", "release", "award")]
    assert steps == [("award", requester.identity.did), ("offer", b.identity.did), ("release", requester.identity.did),
                     ("award", requester.identity.did)]
    # one escrow, funded once: the move did not touch it; the price is the one prusa-a won at
    funded = [e.body for e in heard if isinstance(e.body, JobEvent) and e.body.kind == "funded"]
    assert len(funded) == 2 and len({f.posting for f in funded}) == 1
    assert moved.price == next(e.body.price for e in heard if e.type == "award")  # type: ignore[attr-defined]
    city.settled("prusa-b")
    city.settled("prusa-a")
    assert [j for j, _ in b.stats.settled] == [city.jid("j-move")] and [j for j, _ in a.stats.settled] == [city.jid("j-busy")]
    assert a.stats.released == 1 and b.stats.moved_in == 1
    led = city.ledger
    assert led.balance(city.wallet) == BUDGET - sum(o.price or 0 for o in outcomes.values())
    assert led.balance(f"escrow:{city.jid('j-move')}") == 0 and led.escrow(city.jid(city.jid("j-move"))).state.value == "released"
    assert led.audit() == []


def test_a_started_job_is_kept_when_asked_to_move(city: SmallMarket) -> None:
    a = city.machine(printer("prusa-a", 2000))
    b = city.machine(printer("prusa-b", 4000))
    requester = city.open_requester()
    heard = watch(city, city.jid("j-busy"))
    busy_with(city, "prusa-a", city.jid("j-busy"))
    # an offer to take over a job that has started: the requester does not even ask
    offer = Offer(job_id=city.jid("j-busy"), machine_id="prusa-b", holder="prusa-a", eta_h=0.5)
    tx, as_requester = city.hub("sender", role="machine"), city.hub("requester-side")
    tx.send(topics.offers(city.jid("j-busy")), offer, b.identity)
    city.run(60)
    assert not [e for e in heard if e.type == "release"]
    # asked anyway (a release that crossed the start on the wire), the holder keeps it
    release = Release(job_id=city.jid("j-busy"), machine_id="prusa-a", to_machine="prusa-b", move=1)
    as_requester.send(topics.award(city.jid("j-busy")), release, requester.identity)
    city.run(60, stop=lambda: ("prusa-a", "kept") in city.kinds(city.jid("j-busy")))
    assert ("prusa-a", "kept") in city.kinds(city.jid("j-busy")) and ("prusa-a", "released") not in city.kinds(city.jid("j-busy"))
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-a" and outcome.moves == 0
    assert requester.awards_sent[city.jid("j-busy")] == ["prusa-a"] and a.stats.released == 0
    city.settled("prusa-a")
    assert city.ledger.balance(city.wallet) == BUDGET - (outcome.price or 0) and city.ledger.audit() == []


def test_forged_and_replayed_move_messages_change_nothing(city: SmallMarket) -> None:
    a = city.machine(printer("prusa-a", 2000))
    b = city.machine(printer("prusa-b", 4000), offers=False)  # b will not offer: any move must come from a forgery
    requester = city.open_requester()
    busy_with(city, "prusa-a", city.jid("j-busy"))
    heard = watch(city, city.jid("j-wait"))
    requester.post(job("j-wait", amount=80, deadline_h=12), reserve=RESERVE, value=VALUE)  # queued on prusa-a behind j-busy
    city.run(600, stop=lambda: ("prusa-a", "funded") in city.kinds(city.jid("j-wait")))
    assert ("prusa-a", "funded") in city.kinds(city.jid("j-wait"))
    stranger, tx, as_requester = Identity.generate(), city.hub("sender", role="machine"), city.hub("requester-side")
    # a release not signed by the requester; an offer in prusa-b's name not signed by it; a 'released' not by prusa-a
    as_requester.send(topics.award(city.jid("j-wait")), Release(job_id=city.jid("j-wait"), machine_id="prusa-a", to_machine="prusa-b", move=1), stranger)
    tx.send(topics.offers(city.jid("j-wait")), Offer(job_id=city.jid("j-wait"), machine_id="prusa-b", holder="prusa-a", eta_h=0.1), stranger)
    tx.send(topics.events(city.jid("j-wait")), JobEvent(job_id=city.jid("j-wait"), machine_id="prusa-a", kind="released", move=1), stranger)
    city.run(120)
    assert a.stats.released == 0
    assert not [e for e in heard if e.type == "release" and e.sender == requester.identity.did]
    # now a genuine offer, and the genuine release it brings: replayed byte for byte, and re-signed later
    tx.send(topics.offers(city.jid("j-wait")), Offer(job_id=city.jid("j-wait"), machine_id="prusa-b", holder="prusa-a", eta_h=4.0), b.identity)
    city.run(600, stop=lambda: ("prusa-b", "accepted") in city.kinds(city.jid("j-wait")))
    [release] = [e for e in heard if e.type == "release" and e.sender == requester.identity.did]
    dropped = a.hub.stats["dropped_duplicate"]
    as_requester.publish(topics.award(city.jid("j-wait")), seal(release.body, requester.identity, ts=release.ts, envelope_id=release.id))
    city.run(60)
    assert a.hub.stats["dropped_duplicate"] == dropped + 1
    as_requester.send(topics.award(city.jid("j-wait")), release.body, requester.identity)  # the same release, freshly signed
    tx.send(topics.events(city.jid("j-wait")), JobEvent(job_id=city.jid("j-wait"), machine_id="prusa-a", kind="released", move=1), a.identity)
    tx.send(topics.offers(city.jid("j-wait")), Offer(job_id=city.jid("j-wait"), machine_id="prusa-b", holder="prusa-a", eta_h=4.0), b.identity)
    outcomes = {o.job_id: o for o in city.wait(2)}
    assert outcomes[city.jid("j-wait")].outcome == "paid" and outcomes[city.jid("j-wait")].machine_id == "prusa-b" and outcomes[city.jid("j-wait")].moves == 1
    assert requester.awards_sent[city.jid("j-wait")] == ["prusa-a", "prusa-b"]  # the repeats moved nothing
    city.settled("prusa-b")
    assert a.stats.released == 1 and [j for j, _ in b.stats.settled] == [city.jid("j-wait")]
    assert city.ledger.balance(city.wallet) == BUDGET - sum(o.price or 0 for o in outcomes.values())
    assert city.ledger.audit() == []


@pytest.mark.parametrize("moves", [True, False], ids=["provisional", "award-at-arrival"])
def test_an_early_cheap_job_does_not_block_a_later_valuable_one(city: SmallMarket, moves: bool) -> None:
    """prusa-a, the cheaper, is busy for 3 h and wins a cheap 4 h PLA job due in 8 h; half an hour later
    a valuable 2.5 h PETG job due in 6 h comes, which only prusa-a can print (prusa-b has PLA alone).
    Held to its award, prusa-a cannot fit both, and the valuable job goes unserved; with awards
    provisional, prusa-b (free) takes the cheap one over and prusa-a prints the valuable one."""
    assert PROFILES["prusa-01"].fab is not None and "PETG" in PROFILES["prusa-01"].fab.materials
    city.machine(printer("prusa-a", 2000), offers=moves)
    city.machine(pla_only("prusa-b", 4000), offers=moves)
    requester = city.open_requester(**({} if moves else {"moves": False}))
    requester.post(job("j-first", amount=60, deadline_h=12), reserve=RESERVE, value=VALUE)
    city.run(3600, stop=lambda: started(city, "prusa-a", city.jid("j-first")))
    requester.post(job("j-cheap", amount=80, deadline_h=8), reserve=RESERVE, value=12_000_000)
    requester.post(job("j-valuable", material="PETG", deadline_h=6), reserve=RESERVE, value=90_000_000, after_s=1800)
    outcomes = {o.job_id: o for o in city.wait(3)}
    assert outcomes[city.jid("j-first")].machine_id == "prusa-a"
    if moves:
        assert outcomes[city.jid("j-valuable")].outcome == "paid" and outcomes[city.jid("j-valuable")].machine_id == "prusa-a"
        assert outcomes[city.jid("j-cheap")].outcome == "paid" and outcomes[city.jid("j-cheap")].machine_id == "prusa-b"
        assert outcomes[city.jid("j-cheap")].moves == 1
    else:
        assert outcomes[city.jid("j-cheap")].outcome == "paid" and outcomes[city.jid("j-cheap")].machine_id == "prusa-a"
        assert outcomes[city.jid("j-valuable")].outcome == "expired"
    assert city.ledger.audit() == []
