"""The hub on a three-node NATS cluster (hub.cluster): URLs that name failover nodes, TAMC's ACL
written as NATS permissions, and a persistent session that loses nothing when its node is
SIGKILLed: the hub fails over to another node and every message published meanwhile arrives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from core.errors import InvalidBrokerUrl
from hub import topics
from hub.cluster import NatsCluster, find_nats, subject
from hub.envelope import Envelope, seal
from hub.messages import Bid, SealedBid
from hub.transport import Hub, parse_broker_url
from ledger import Identity

ALICE = Identity.from_seed(b"c" * 32)


def test_a_broker_url_names_the_cluster_nodes_to_fail_over_to() -> None:
    address = parse_broker_url("mqtt://m1:pw@127.0.0.1:1884?mqtt=3.1.1&failover=127.0.0.1:1885,nats-3:1886")
    assert (address.host, address.port, address.mqtt5) == ("127.0.0.1", 1884, False)
    assert address.failover == (("127.0.0.1", 1885), ("nats-3", 1886))
    for bad in ("mqtt://h:1?failover=nohost", "mqtt://h:1?failover=h:99999", "mqtt://h:1?fail=h:2"):
        with pytest.raises(InvalidBrokerUrl):
            parse_broker_url(bad)


def test_topics_become_nats_subjects_and_ids_keep_one_level() -> None:
    assert subject("tamc/v3/jobs/+/bids") == "tamc.v3.jobs.*.bids"
    assert subject("tamc/v3/machines/#") == "tamc.v3.machines.>"
    assert topics.bids("requester:acme.j-1") == "tamc/v3/jobs/requester:acme~j-1/bids"  # a dot would split the subject


needs_nats = pytest.mark.skipif(find_nats() is None, reason="nats-server is not installed (apt-get install nats-server)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats")) as c:
        yield c


@needs_nats
def test_the_cluster_enforces_who_reads_bids(cluster: NatsCluster) -> None:
    with Hub(cluster.admit("acl-m", "machine", node=0), name="acl-m") as machine:
        got: list[Envelope] = []
        machine.subscribe(topics.bids("requester:x.j1"), lambda topic, env: got.append(env))
        deadline = time.monotonic() + 10
        while not machine.stats["refused_subscriptions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert machine.stats["refused_subscriptions"] == 1  # only requesters read bids


@needs_nats
def test_a_session_loses_nothing_when_its_node_is_killed(cluster: NatsCluster) -> None:
    topic = topics.bids("requester:fo.j1")
    got: list[str] = []
    lock = threading.Lock()

    def inbox(topic: str, env: Envelope) -> None:
        with lock:
            got.append(env.id)

    rx = Hub(cluster.admit("fo-req", "requester", node=0), name="fo-req", session="fo-req").connect()
    tx = Hub(cluster.admit("fo-m", "machine", node=1), name="fo-m").connect()
    try:
        rx.subscribe(topic, inbox)
        time.sleep(0.5)
        bid = SealedBid.of(Bid(job_id="requester:fo.j1", machine_id="fo-m", price=1_000_000, eta_h=1.0), ALICE.did)
        for i in range(30):
            if i == 10:
                cluster.kill(0)  # the receiver's node dies outright mid-stream
            if i == 20:
                cluster.start(0)
            tx.publish(topic, seal(bid, ALICE))
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while len(set(got)) < 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        with lock:
            received = set(got)
        assert len(received) == 30, f"{30 - len(received)} of 30 messages lost"
        assert rx.stats["failovers"] >= 1  # it left its dead node for another
    finally:
        rx.close()
        tx.close()
