"""The hub: envelopes are signed and checked, and a receiver on a real broker drops and counts
what it must not act on."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from city import PRINT
from conftest import broker_kind

from core.clock import ScaledClock
from core.errors import BrokerUnavailable, EnvelopeRejected, InputError, InvalidBrokerUrl
from core.net import free_port
from hub import topics
from hub.broker import MAX_PACKET_BYTES, BrokerHome, RunningBroker, start_broker
from hub.envelope import (
    MAX_ENVELOPE_BYTES,
    Envelope,
    FloodGuard,
    ReplayGuard,
    new_envelope_id,
    now_ms,
    open_envelope,
    seal,
)
from hub.messages import Bid, CallForProposals, Presence, SealedBid
from hub.transport import Hub, parse_broker_url
from ledger import Identity, canonical_json
from machines import JobSpec

ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
BID = SealedBid.of(Bid(job_id="j1", machine_id="prusa-01", price=5_000_000, eta_h=2.0), ALICE.did)


def _tamper(payload: bytes, **changes: object) -> bytes:
    doc = json.loads(payload)
    for path, value in changes.items():
        target = doc
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return json.dumps(doc).encode()


def test_sealed_envelope_opens_with_its_sender_and_typed_body() -> None:
    env = open_envelope(seal(BID, ALICE))
    assert env.sender == ALICE.did
    assert env.type == "bid"
    assert env.body == BID
    assert abs(env.ts - now_ms()) < 5_000


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (_tamper(seal(BID, ALICE), body__price=1), "bad_signature"),  # a forged price
        (_tamper(seal(BID, ALICE), sender=MALLORY.did), "bad_signature"),  # claims another sender
        (_tamper(seal(BID, ALICE), sig=""), "unsigned"),
        (_tamper(seal(BID, ALICE), sender="did:key:nope"), "bad_signature"),
    ],
)
def test_bad_envelopes_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeRejected) as info:
        open_envelope(payload)
    assert info.value.reason == reason


def test_unknown_type_and_bad_body_are_rejected_even_when_signed() -> None:
    from ledger.identity import sign_document

    doc = sign_document({"v": 2, "type": "teleport", "id": "x", "ts": now_ms(), "body": {}}, ALICE)
    with pytest.raises(EnvelopeRejected) as info:
        open_envelope(json.dumps(doc).encode())
    assert info.value.reason == "unknown_type"
    doc = sign_document({"v": 2, "type": "bid", "id": "x", "ts": now_ms(), "body": {"price": -1}}, ALICE)
    with pytest.raises(EnvelopeRejected) as info:
        open_envelope(json.dumps(doc).encode())
    assert info.value.reason == "malformed"


def test_replay_guard_refuses_stale_future_and_repeated_ids_and_forgets_old_ones() -> None:
    guard = ReplayGuard(max_age_ms=1_000, max_skew_ms=500)
    now = 10_000_000
    fresh = open_envelope(seal(BID, ALICE, ts=now))
    guard.check(fresh, now=now)
    with pytest.raises(EnvelopeRejected, match="duplicate"):
        guard.check(fresh, now=now + 10)
    with pytest.raises(EnvelopeRejected, match="stale"):
        guard.check(open_envelope(seal(BID, ALICE, ts=now - 2_000)), now=now)
    with pytest.raises(EnvelopeRejected, match="ahead"):
        guard.check(open_envelope(seal(BID, ALICE, ts=now + 2_000)), now=now)
    guard.check(open_envelope(seal(BID, ALICE, ts=now + 5_000)), now=now + 5_000)
    assert (fresh.sender, fresh.id) not in guard._seen  # memory is bounded by the age window


def test_an_id_squatted_by_another_sender_does_not_shadow_the_genuine_envelope() -> None:
    """Repeats are keyed by sender and id: a validly signed envelope of Mallory's that carries the
    id Alice will use next does not make a receiver drop Alice's; and ids cannot be guessed."""
    guard = ReplayGuard()
    now = now_ms()
    genuine = open_envelope(seal(BID, ALICE, ts=now))
    guard.check(open_envelope(seal(BID, MALLORY, ts=now, envelope_id=genuine.id)), now=now)  # the squatter comes first
    guard.check(genuine, now=now)  # still accepted
    with pytest.raises(EnvelopeRejected, match="duplicate"):
        guard.check(genuine, now=now)  # its own repeat is not
    ids = [new_envelope_id() for _ in range(3)]
    assert ids == sorted(ids) and len({i[12:] for i in ids}) == 3  # made in order; 64 random bits each
    assert all(len(i) == 28 for i in ids)


@pytest.mark.parametrize(("value", "canonical"), [
    # RFC 8785, appendix B, and the floats Python writes otherwise ("5.0", "2.1e-05")
    (5.0, "5"), (2.1e-05, "0.000021"), (-0.0, "0"), (1e21, "1e+21"), (1e-7, "1e-7"), (4.5, "4.5"), (0.002, "0.002"),
    (333333333.3333333, "333333333.3333333"), (1e30, "1e+30"), (9007199254740991, "9007199254740991"),
    ({"b": 1, "a": [True, None, "é\u0001"]}, '{"a":[true,null,"é\\u0001"],"b":1}'),
    ({"\u20ac": 1, "\r": 2, "1": 3}, '{"\\r":2,"1":3,"€":1}'),
])
def test_canonical_json_is_rfc_8785(value: object, canonical: str) -> None:
    """What is signed is fully specified: a verifier in another language derives the same bytes."""
    assert canonical_json(value) == canonical.encode("utf-8")


def test_a_call_from_a_stranger_does_not_set_a_nodes_clock(broker: RunningBroker) -> None:
    """A node in its own process keeps the time and pace of the market it was told to (``tamc agent
    --clock-from DID``): a stranger's call at a million times real time moves nothing."""
    market = Identity.generate()
    clock = ScaledClock(1.0, start=datetime.now(UTC))
    inbox = Inbox()
    node = Hub(broker.admit("clock-node", "machine"), name="clock-node", clock=clock, timekeepers=[market.did])
    poster = Hub(broker.admit("clock-poster", "requester"), name="clock-poster")
    with node as rx, poster as tx:
        rx.subscribe(topics.cfp("north", "printer_3d"), inbox)
        time.sleep(0.2)
        for signer, speed in ((MALLORY, 1_000_000.0), (market, 600.0)):
            call = CallForProposals(job=JobSpec(id=f"j-clock-{int(speed)}", **PRINT), reserve=1_000_000, bid_deadline=now_ms() + 60_000,
                                    deadline_at=now_ms() + 3_600_000, speed=speed)
            tx.send(topics.cfp("north", "printer_3d"), call, signer)
            inbox.wait_for(1 if signer is MALLORY else 2)
            assert clock.speed == (1.0 if signer is MALLORY else 600.0), f"after {speed:g}x from {signer.did[-6:]}"
        assert len(inbox.got) == 2  # both calls are heard; only the market's sets the time


def test_a_flooding_sender_is_dropped_and_counted_and_honest_traffic_carries_on(broker: RunningBroker) -> None:
    """A machine (a broker user allowed to bid) sends 20,000 signed bids as fast as it can: the
    receiver takes its allowance (here 100 at once and 100 a second, so that however slowly a busy
    machine reads them, the flood is faster) and drops the rest, counted as ``flood``; an honest
    machine's bid sent meanwhile, and after, arrives."""
    inbox = Inbox()
    topic = topics.bids("j-flood")
    honest_bid = SealedBid.of(Bid(job_id="j-flood", machine_id="honest", price=4_000_000, eta_h=1.0), ALICE.did)
    receiver = Hub(broker.admit("flood-receiver", "requester"), name="receiver", flood=FloodGuard(burst=100, per_s=100.0))
    flooder = Hub(broker.admit("flood-machine", "machine"), name="flooder")
    honest = Hub(broker.admit("flood-honest", "machine"), name="honest")
    with receiver as rx, flooder as fx, honest as hx:
        rx.subscribe(topic, inbox)
        time.sleep(0.2)
        payloads = [seal(BID, MALLORY) for _ in range(20_000)]  # sealed first: the flood goes out as fast as the socket takes it
        for i, payload in enumerate(payloads):
            fx.publish(topic, payload)
            if i == 10_000:
                hx.send(topic, honest_bid, ALICE)
        hx.send(topic, honest_bid, ALICE)
        _settle(rx, 20_002, timeout=60)
        from_flooder = sum(1 for _, env in inbox.got if env.sender == MALLORY.did)
        assert rx.dropped().get("flood", 0) > 0 and from_flooder + rx.dropped()["flood"] == 20_000
        assert [env.body for _, env in inbox.got if env.sender == ALICE.did] == [honest_bid, honest_bid]


def test_the_flood_allowance_is_counted_in_real_time_per_sender() -> None:
    """2,000 at once, then 2,000 a second of real time (on a market 3,600 times faster, an hour of
    market time is a second); one sender's flood leaves another's allowance whole."""
    guard = FloodGuard(burst=2_000, per_s=2_000.0)
    mallory, alice = open_envelope(seal(BID, MALLORY)), open_envelope(seal(BID, ALICE))
    now = 1_000_000_000
    for _ in range(2_000):
        guard.check(mallory, now=now, scale=3600.0)
    with pytest.raises(EnvelopeRejected, match="more than 2000"):
        guard.check(mallory, now=now, scale=3600.0)
    guard.check(alice, now=now, scale=3600.0)  # her own allowance
    later = now + 1_800_000  # half a market hour: half a second of real time at 3600x
    for _ in range(1_000):
        guard.check(mallory, now=later, scale=3600.0)
    with pytest.raises(EnvelopeRejected, match="more than 2000"):
        guard.check(mallory, now=later, scale=3600.0)


def test_what_rfc_8785_cannot_encode_is_refused_before_signing() -> None:
    with pytest.raises(InputError, match="RFC 8785"):
        canonical_json({"amount": 2**53})  # beyond I-JSON's integers: money is never that large


def test_broker_urls_are_checked() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1884").port == 1884
    assert parse_broker_url("localhost").port == 1883
    for bad in ("http://x:1", "mqtt://:1883", "mqtt://h:99999"):
        with pytest.raises(InvalidBrokerUrl):
            parse_broker_url(bad)


def test_no_broker_is_a_clear_error() -> None:
    with pytest.raises(BrokerUnavailable, match="no MQTT broker answers"):
        Hub(f"mqtt://127.0.0.1:{free_port()}").connect(timeout_s=0.5)


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[str, Envelope]] = []
        self.event = threading.Event()

    def __call__(self, topic: str, env: Envelope) -> None:
        self.got.append((topic, env))
        self.event.set()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[tuple[str, Envelope]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.got


def _settle(hub: Hub, total: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while hub.stats["received"] < total and time.monotonic() < deadline:
        time.sleep(0.01)


def _pair(broker: RunningBroker) -> tuple[Hub, Hub]:
    """A requester that reads bids and a machine that sends them, each as its own broker user."""
    return (Hub(broker.admit("hub-receiver", "requester"), name="receiver"),
            Hub(broker.admit("hub-sender", "machine"), name="sender"))


def test_receiver_drops_and_counts_forged_replayed_stale_and_unsigned(broker: RunningBroker) -> None:
    inbox = Inbox()
    topic = topics.bids("j1")
    receiver, sender = _pair(broker)
    with receiver as rx, sender as tx:
        rx.subscribe(topic, inbox)
        time.sleep(0.2)
        good = seal(BID, ALICE)
        tx.publish(topic, good)
        tx.publish(topic, good)  # replayed byte for byte
        tx.publish(topic, _tamper(seal(BID, ALICE), body__price=1))  # forged
        tx.publish(topic, _tamper(seal(BID, ALICE), sender=MALLORY.did))  # impersonation
        tx.publish(topic, seal(BID, ALICE, ts=now_ms() - 120_000))  # stale
        tx.publish(topic, _tamper(seal(BID, ALICE), sig=""))  # unsigned
        tx.publish(topic, b"\x00garbage")
        _settle(rx, 7)
        assert [env.body for _, env in inbox.got] == [BID]
        assert rx.dropped() == {"duplicate": 1, "bad_signature": 2, "stale": 1, "unsigned": 1, "malformed": 1}
        assert rx.stats["accepted"] == 1


def test_an_envelope_over_the_size_limit_is_dropped_unread_and_counted(broker: RunningBroker) -> None:
    """Over the protocol's limit but under the broker's packet cap: the receiver drops it before
    parsing it, counts it, and the honest message after it arrives."""
    inbox = Inbox()
    topic = topics.bids("j1")
    padded = _tamper(seal(BID, ALICE), body__reason="x" * MAX_ENVELOPE_BYTES)  # well-formed JSON, too big
    assert MAX_ENVELOPE_BYTES < len(padded) < MAX_PACKET_BYTES - 100
    receiver, sender = _pair(broker)
    with receiver as rx, sender as tx:
        rx.subscribe(topic, inbox)
        time.sleep(0.2)
        tx.publish(topic, padded)
        tx.publish(topic, seal(BID, ALICE))
        _settle(rx, 2)
        assert [env.body for _, env in inbox.got] == [BID]
        assert rx.dropped() == {"oversize": 1}
    with pytest.raises(InputError, match="over the protocol's limit"):  # and nobody seals one
        seal(BID.model_copy(update={"sealed": "x" * MAX_ENVELOPE_BYTES}), ALICE)


def test_the_broker_cuts_off_a_client_that_sends_a_5_mb_packet(broker: RunningBroker) -> None:
    """A signed 5 MB call never reaches anyone: mosquitto disconnects its sender at the packet
    cap, and the honest traffic on the same broker carries on."""
    if broker_kind() != "mosquitto":
        pytest.skip("the packet cap is mosquitto's (the embedded broker relies on the receivers' limit)")
    inbox = Inbox()
    topic = topics.bids("j1")
    huge = _tamper(seal(BID, ALICE), body__reason="x" * 5_000_000)
    address = parse_broker_url(broker.admit("flooder", "machine"))  # a machine the broker knows, sending a bid too big
    gone = threading.Event()
    flooder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder")
    flooder.username_pw_set(address.username, address.password)
    flooder.on_disconnect = lambda *_: gone.set()
    receiver, sender = _pair(broker)
    with receiver as rx, sender as tx:
        rx.subscribe(topic, inbox)
        time.sleep(0.2)
        flooder.connect(address.host, address.port)
        flooder.loop_start()
        try:
            flooder.publish(topic, huge, qos=1)
            assert gone.wait(5.0), "the broker kept a client that sent a packet over its cap"
        finally:
            flooder.loop_stop()
        tx.publish(topic, seal(BID, ALICE))
        _settle(rx, 1)
        time.sleep(0.2)  # anything still on its way would land now
        assert [env.body for _, env in inbox.got] == [BID] and rx.stats["received"] == 1


def test_retained_presence_is_delivered_to_late_subscribers_but_only_once(broker: RunningBroker) -> None:
    body = Presence(machine_id="m-retained", state="online", session="s1", kind="drone", region="north", territory=("north",))
    with Hub(broker.admit("m-retained", "machine"), name="tx") as tx:
        tx.publish(topics.presence("m-retained"), seal(body, ALICE), retain=True)
        time.sleep(0.1)
    inbox = Inbox()
    with Hub(broker.admit("late", "requester"), name="late") as rx:
        rx.subscribe(topics.ALL_PRESENCE, inbox)
        deadline = time.monotonic() + 5  # other tests' machines left their presence retained too
        while not any(env.body == body for _, env in inbox.got) and time.monotonic() < deadline:
            time.sleep(0.01)
        got = list(inbox.got)
        assert any(env.body == body for _, env in got)
        rx.unsubscribe(topics.ALL_PRESENCE, inbox)
        rx.subscribe(topics.ALL_PRESENCE, inbox)  # the broker sends the retained copy again
        _settle(rx, 2 * len(got))
        assert sum(1 for _, env in inbox.got if env.body == body) == 1
        assert rx.dropped().get("duplicate", 0) >= 1


def test_hub_reconnects_and_resubscribes_after_the_broker_restarts(tmp_path: Path) -> None:
    port = free_port()
    inbox = Inbox()
    home = BrokerHome(tmp_path / "broker")  # the same users and ACL after the restart
    with start_broker(port=port, home=home) as first:
        rx = Hub(first.admit("survivor", "requester"), name="survivor").connect()
        rx.subscribe(topics.bids("after-restart"), inbox)
        time.sleep(0.1)
    gone = time.monotonic() + 15  # paho's thread notices the lost socket when it next reads it: on a busy machine, later
    while rx.connected and time.monotonic() < gone:
        time.sleep(0.02)
    assert not rx.connected, "the hub did not notice the broker stopped"
    with start_broker(port=port, home=home) as second:
        assert rx.wait_connected(15), "the hub did not reconnect to the restarted broker"
        time.sleep(0.3)  # the resubscription reaches the broker
        with Hub(second.admit("restart-tx", "machine"), name="tx") as tx:
            tx.publish(topics.bids("after-restart"), seal(BID, ALICE))
            assert inbox.wait_for(1)
        assert rx.stats["connects"] == 2 and rx.stats["disconnects"] >= 1
        rx.close()


def test_embedded_broker_carries_signed_messages_when_mosquitto_is_absent() -> None:
    inbox = Inbox()
    with start_broker("embedded") as broker:
        assert broker.kind == "embedded"
        with Hub(broker.url, name="rx") as rx, Hub(broker.url, name="tx") as tx:
            rx.subscribe(topics.bids("j1"), inbox)
            time.sleep(0.3)
            tx.publish(topics.bids("j1"), seal(BID, ALICE))
            assert [env.body for _, env in inbox.wait_for(1)] == [BID]
