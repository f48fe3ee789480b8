"""The contract net end to end, in one process, over the real broker and a real ledger: machine
nodes and a requester negotiate, escrow, work, pay and split; dropouts are taken over."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from city import BUDGET, SmallMarket, job, printer

from agents.node.workshop import DONE_AGAIN_S
from core.clock import Clock
from core.errors import EnvelopeRejected
from hub import topics
from hub.envelope import Envelope
from hub.jobids import owned
from hub.messages import Award, Bid, CallForProposals, JobEvent, Presence, SealedBid
from ledger import Identity, settlement, split_pro_rata
from machines.driver import SimDriver


class SlowClock:
    """The city's time as a machine that runs 10 % slow sees it (a simulation aid)."""

    def __init__(self, clock: Clock, rate: float) -> None:
        self.clock, self.rate, self.origin = clock, rate, clock.now()

    def now(self) -> datetime:
        return self.origin + (self.clock.now() - self.origin) * self.rate


def test_bid_round_trip_signed_by_the_machine(city: SmallMarket) -> None:
    node = city.machine(printer("prusa-a", 2000))
    bids: list[Envelope] = []
    rx = city.hub("observer")
    tx_id, owner = city.caller()
    rx.subscribe(topics.bids(owned(owner, "rt-1")), lambda t, e: bids.append(e))
    city.settle()
    cfp = CallForProposals(job=job(owned(owner, "rt-1")), reserve=50_000_000, bid_deadline=city.ms() + 120_000,
                           deadline_at=city.ms() + 8 * 3_600_000, speed=city.clock.speed)
    rx.send(topics.cfp("north", "printer_3d"), cfp, tx_id)
    city.run(60, stop=lambda: bool(bids))
    assert len(bids) == 1
    bid = bids[0]
    assert bid.sender == node.identity.did
    assert isinstance(bid.body, SealedBid) and bid.body.machine_id == "prusa-a"
    terms = bid.body.open(tx_id)  # sealed to the did that posted the call
    expected = node.decide(cfp.job.model_copy(update={"deadline_h": (cfp.deadline_at - bid.ts) / 3_600_000}), cfp.deadline_at)
    assert terms.price == expected.price and terms.machine_id == "prusa-a"


def test_a_bid_is_sealed_to_the_requester_alone_and_names_no_cost(city: SmallMarket) -> None:
    """A competitor (another requester, here: the broker's ACL lets only requesters read bids) gets
    the bid's bytes and can open nothing: no price, no cost; a sealed bid copied into another
    machine's envelope does not open as that machine's; the requester that posted the call awards
    from the sealed bids as before."""
    node = city.machine(printer("prusa-a", 2000))
    wire: list[bytes] = []
    heard: list[Envelope] = []
    competitor = city.hub("competitor")
    competitor.subscribe(topics.bids(city.jid("j-sealed")), lambda t, e: heard.append(e))
    raw = city.hub("raw-wire")  # what the broker delivers, byte for byte
    raw._client.on_message = lambda c, u, msg: wire.append(bytes(msg.payload))
    raw._client.subscribe(topics.bids(city.jid("j-sealed")), qos=1)
    requester = city.open_requester()
    requester.post(job("j-sealed"), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-a" and outcome.bids == 1
    [env] = heard
    assert isinstance(env.body, SealedBid) and set(env.body.model_dump()) == {"job_id", "machine_id", "sealed"}
    price = str(outcome.price)
    assert wire and all(price.encode() not in payload and b"cost" not in payload for payload in wire)
    with pytest.raises(EnvelopeRejected, match="not sealed to"):
        env.body.open(Identity.generate())  # anyone but the requester: ciphertext only
    assert env.body.open(requester.identity).price == outcome.price
    stolen = env.body.model_copy(update={"machine_id": "prusa-b"})  # a competitor re-signs prusa-a's sealed price as its own
    with pytest.raises(EnvelopeRejected, match="name prusa-a"):
        stolen.open(requester.identity)
    assert node.stats.bids == 1


def test_job_is_done_paid_and_split_to_the_micro_unit(city: SmallMarket) -> None:
    city.machine(printer("prusa-a", 2000))
    city.machine(printer("prusa-b", 4000))
    requester = city.open_requester()
    requester.post(job("j-ok"), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-a" and outcome.bids == 2
    city.settled("prusa-a")
    assert [k for m, k in city.kinds(city.jid("j-ok"))] == ["accepted", "funded", "started", "done", "paid"]
    [(_job_id, costs)] = city.nodes["prusa-a"].stats.settled
    led = city.ledger
    price = outcome.price
    assert price is not None and costs.price == price
    assert led.balance(city.wallet) == BUDGET - price
    assert led.balance(f"escrow:{city.jid('j-ok')}") == 0
    assert led.balance("machine:prusa-a") == 0
    assert led.balance("utility:energy") == costs.energy
    assert led.balance("reserve:prusa-a") == costs.wear
    assert led.balance("supplier:materials") == costs.consumables
    shares = split_pro_rata(price - costs.paid_out, {"holder:alice": 60, "holder:bob": 40})
    assert led.balance("holder:alice") == shares["holder:alice"]
    assert led.balance("holder:bob") == shares["holder:bob"]
    assert led.audit() == []


def test_silent_winner_is_passed_over_for_the_runner_up(city: SmallMarket) -> None:
    # A registered machine that bids low and then never answers its award.
    ghost = Identity.generate()
    settlement.register_machine(city.ledger, "ghost", ghost.did, {"alice": 1})
    ghost_hub = city.hub("ghost", role="machine")

    def lowball(topic: str, env: Envelope) -> None:
        cfp = env.body
        assert isinstance(cfp, CallForProposals)
        bid = Bid(job_id=cfp.job.id, machine_id="ghost", price=1_000_000, eta_h=1)
        ghost_hub.send(topics.bids(cfp.job.id), SealedBid.of(bid, env.sender), ghost)

    ghost_hub.subscribe(topics.cfp("north", "printer_3d"), lowball)
    ghost_presence = Presence(machine_id="ghost", state="online", session="g", kind="printer_3d", region="north", territory=("north",))
    ghost_hub.send(topics.presence("ghost"), ghost_presence, ghost, retain=True)
    city.machine(printer("prusa-a", 2000))
    requester = city.open_requester()
    requester.post(job("j-ghost"), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-a"
    assert requester.awards_sent[city.jid("j-ghost")] == ["ghost", "prusa-a"]
    city.settled("prusa-a")
    assert city.ledger.balance("machine:ghost") == 0
    ghost_hub.publish(topics.presence("ghost"), b"", retain=True)  # clear the retained notice
    assert city.ledger.balance(city.wallet) == BUDGET - (outcome.price or 0)


def test_failure_mid_job_hands_it_to_the_runner_up_and_charges_once(city: SmallMarket) -> None:
    city.machine(printer("prusa-a", 2000), fail_jobs=frozenset({city.jid("j-fail")}))
    city.machine(printer("prusa-b", 4000))
    requester = city.open_requester()
    requester.post(job("j-fail"), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-b" and outcome.takeovers == 1
    assert requester.awards_sent[city.jid("j-fail")] == ["prusa-a", "prusa-b"]
    kinds = city.kinds(city.jid("j-fail"))
    assert ("prusa-a", "failed") in kinds and ("prusa-b", "done") in kinds
    assert ("prusa-a", "done") not in kinds
    city.settled("prusa-b")
    led = city.ledger
    assert led.balance(city.wallet) == BUDGET - (outcome.price or 0)  # charged once, at the contract price
    assert led.balance("machine:prusa-a") == 0 and not city.nodes["prusa-a"].stats.settled
    assert [j for j, _ in city.nodes["prusa-b"].stats.settled] == [city.jid("j-fail")]


def test_redelivered_and_late_messages_change_nothing(city: SmallMarket) -> None:
    node = city.machine(printer("prusa-a", 2000))
    requester = city.open_requester()
    requester.post(job("j-idem"), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    city.settled("prusa-a")
    before = city.ledger.balances()
    postings = len(city.ledger.statement(city.wallet))
    # the machine says 'done' again, freshly signed; a stranger claims it too; the requester re-posts the job
    done = JobEvent(job_id=city.jid("j-idem"), machine_id="prusa-a", kind="done", progress=1.0)
    city.hubs[0].send(topics.events(city.jid("j-idem")), done, node.identity)
    city.hubs[0].send(topics.events(city.jid("j-idem")), done, Identity.generate())
    requester.post(job("j-idem"), reserve=50_000_000, value=60_000_000)
    city.run(1800)
    assert city.ledger.balances() == before
    assert len(city.ledger.statement(city.wallet)) == postings
    assert len(city.outcomes) == 1 and outcome.outcome == "paid"


def test_no_bids_expires_and_an_impossible_deadline_refunds(city: SmallMarket) -> None:
    city.machine(printer("prusa-a", 2000))
    requester = city.open_requester(grace_h=0.0)
    requester.post(job("j-cheap"), reserve=100_000, value=200_000)  # under every machine's floor
    requester.post(job("j-mill", kind="cnc_mill", capability="mill", material="aluminium"), reserve=50_000_000)
    outcomes = {o.job_id: o for o in city.wait(2)}
    assert outcomes[city.jid("j-cheap")].outcome == "expired" and outcomes[city.jid("j-cheap")].reason == "no bids"
    assert outcomes[city.jid("j-mill")].outcome == "expired"
    assert city.ledger.balance(city.wallet) == BUDGET


def test_job_past_its_deadline_is_refunded_in_full(city: SmallMarket) -> None:
    profile = printer("prusa-a", 2000)
    city.machine(profile, driver=SimDriver(profile, SlowClock(city.clock, 0.9)))  # it works slow: it finishes after the deadline
    requester = city.open_requester(grace_h=0.0)
    # 2 h of printing, 2.05 h deadline: the machine accepts; a 0.1 h slowdown makes it late
    requester.post(job("j-late", deadline_h=2.05), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    assert outcome.outcome == "refunded" and outcome.reason == "not finished by the deadline"
    assert city.ledger.balance(city.wallet) == BUDGET
    assert city.ledger.escrow(city.jid("j-late")).state.value == "refunded"


def test_offline_notice_for_an_old_session_is_ignored(city: SmallMarket) -> None:
    node = city.machine(printer("prusa-a", 2000))
    requester = city.open_requester()
    stale = node.presence("offline")
    node.session = "new-session"  # the machine reconnected since that notice was signed
    city.hubs[0].publish(topics.presence("prusa-a"), node.presence("online"), retain=True)
    city.settle()
    city.hubs[0].publish(topics.presence("prusa-a"), stale, retain=True)
    city.settle()
    assert "prusa-a" in requester._online


def test_many_jobs_in_flight_close_exactly_once(city: SmallMarket) -> None:
    for i, margin in enumerate((2000, 2500, 3000)):
        city.machine(printer(f"prusa-{i}", margin))
    # 30 calls at once, on the market's own windows: on the virtual clock they are the market's time,
    # however long the three nodes take to answer them one by one
    requester = city.open_requester()
    posted = [job(f"j-many-{i}", amount=4, deadline_h=3) for i in range(30)]
    done = threading.Event()
    for j in posted:
        requester.post(j, reserve=50_000_000, value=60_000_000)
    outcomes = city.wait(30)
    done.set()
    assert sorted(o.job_id for o in outcomes) == sorted(city.jid(j.id) for j in posted)
    assert all(o.outcome in ("paid", "expired") for o in outcomes)
    paid = [o for o in outcomes if o.outcome == "paid"]
    assert paid, f"at least some of the jobs must be filled: {sorted({o.reason for o in outcomes})}"
    city.run(3600)
    settled = [j for n in city.nodes.values() for j, _ in n.stats.settled]
    assert sorted(settled) == sorted(o.job_id for o in paid)  # each paid job settled by one machine only
    assert city.ledger.balance(city.wallet) == BUDGET - sum(o.price or 0 for o in paid)


def test_a_call_under_someone_elses_job_id_changes_nothing_for_its_owner(city: SmallMarket) -> None:
    """A squatter (registered, with a wallet of its own) posts first under the honest requester's
    next job id, and under an id that names no owner: machines hear neither; the honest call is bid
    on and paid as if the squatter had never spoken."""
    node = city.machine(printer("prusa-a", 2000))
    requester = city.open_requester()
    squatter, _ = city.caller("squatter")
    tx = city.hub("squatter")
    for job_id in (city.jid("j-next"), "j-next"):
        call = CallForProposals(job=job(job_id), reserve=1_000_000_000, bid_deadline=city.ms() + 600_000,
                                deadline_at=city.ms() + 8 * 3_600_000, speed=city.clock.speed)
        tx.send(topics.cfp("north", "printer_3d"), call, squatter)
    city.settle()
    assert node.stats.unowned_calls == 2 and node.open_call(city.jid("j-next")) is None and node.stats.bids == 0
    assert requester.post(job("j-next"), reserve=50_000_000, value=60_000_000) == city.jid("j-next")
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-a" and outcome.bids == 1
    assert city.ledger.balance(city.wallet) == BUDGET - (outcome.price or 0)


def test_presence_counts_only_when_the_machine_signed_it(city: SmallMarket) -> None:
    """A stranger signs presence in other machines' names (its own topic; the broker stops it
    publishing on theirs): a phantom online for the job's region, which would hold bidding open to
    its deadline, and the real bidder gone offline, with the real session, which would move the job.
    The requester counts neither: bidding closes as soon as the real machine bid, and it is paid once."""
    node = city.machine(printer("prusa-a", 2000))
    awards: list[int] = []
    watcher = city.hub("watch-m", role="machine")
    requester = city.open_requester()
    stranger = Identity.generate()
    tx = city.hub("mallory-m", role="machine")
    for forged in (Presence(machine_id="phantom", state="online", session="p", kind="printer_3d", region="north", territory=("north",)),
                   Presence(machine_id="prusa-a", state="offline", session=node.session, kind="printer_3d", region="north",
                            territory=("north",))):
        tx.send(topics.presence("mallory-m"), forged, stranger)
    city.settle()
    job_id = city.jid("j-here")
    watcher.subscribe(topics.award(job_id), lambda t, env: awards.append(env.ts))
    city.settle()
    posted = city.ms()
    requester.post(job("j-here"), reserve=50_000_000, value=60_000_000)
    [outcome] = city.wait()
    assert outcome.outcome == "paid" and outcome.machine_id == "prusa-a" and outcome.takeovers == 0
    assert requester.awards_sent[job_id] == ["prusa-a"]
    assert awards[0] - posted < requester.config.bid_window_s * 1000 / 2  # closed early: the phantom did not count


def test_a_machine_unpaid_for_a_done_job_says_done_again_and_believes_the_ledger(city: SmallMarket) -> None:
    """A requester that misses the machine's ``done`` (its broker died, it restarted) and later pays
    in the ledger without a word: the machine says ``done`` again after ``DONE_AGAIN_S``, and once the
    ledger shows the release it settles (costs, holders), once."""
    node = city.machine(printer("prusa-a", 2000))
    me, owner = city.caller("forgetful")
    settlement.open_requester(city.ledger, "forgetful", me.did, 0)
    city.ledger.mint(owner, 100_000_000, key="forgetful-budget")
    hub = city.hub("forgetful")
    job_id = owned(owner, "j-quiet")
    seen: list[Envelope] = []
    hub.subscribe(topics.bids(job_id), lambda t, e: seen.append(e))
    hub.subscribe(topics.events(job_id), lambda t, e: seen.append(e))
    city.settle()
    now = city.ms()
    hub.send(topics.cfp("north", "printer_3d"), CallForProposals(job=job(job_id), reserve=50_000_000, bid_deadline=now + 60_000,
                                                                 deadline_at=now + 8 * 3_600_000, speed=city.clock.speed), me)
    city.run(60, stop=lambda: any(isinstance(e.body, SealedBid) for e in seen))
    terms = next(e.body for e in seen if isinstance(e.body, SealedBid)).open(me)
    hub.send(topics.award(job_id), Award(job_id=job_id, machine_id="prusa-a", price=terms.price, accept_by=city.ms() + 120_000,
                                         attempt=1), me)

    def said(kind: str) -> list[JobEvent]:
        return [e.body for e in seen if isinstance(e.body, JobEvent) and e.body.kind == kind]

    city.run(120, stop=lambda: bool(said("accepted")))
    posting = settlement.fund_job(city.ledger, job_id, owner, terms.price)
    hub.send(topics.events(job_id), JobEvent(job_id=job_id, machine_id="prusa-a", kind="funded", posting=posting), me)
    city.run(8 * 3600 + DONE_AGAIN_S * city.clock.speed, stop=lambda: len(said("done")) >= 2)  # the first 'done' went unanswered: it says it again
    assert said("done")[1].detail == "again: not paid yet" and node.stats.done_again == 1 and node.stats.paid == 0
    settlement.pay_job(city.ledger, job_id, "prusa-a")  # paid in the ledger, and not a word on the hub
    city.run(DONE_AGAIN_S * city.clock.speed + 60, stop=lambda: node.stats.paid == 1)
    assert node.stats.paid == 1 and city.ledger.posting(f"costs:{job_id}:prusa-a") is not None
    city.run(3 * DONE_AGAIN_S * city.clock.speed)
    assert len(said("done")) == 2 and node.stats.paid == 1  # settled once, and silent since
