"""The broker as a trust boundary, on a real mosquitto with the configuration TAMC generates:
nobody connects without credentials, and every role publishes and reads only its own topic
families. Tested from the receiving side (a denied publish is PUBACKed with 135 under MQTT 5, but
what counts is that it never arrives), over every role and every topic family.

The expected tables below are written out by hand from docs/protocol.md, not read from
``hub.access``: the test holds the generated ACL to the documented one."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from conftest import broker_kind

from core.errors import BrokerRefused
from hub import topics
from hub.access import ROLES, Role
from hub.broker import RunningBroker
from hub.envelope import Envelope
from hub.messages import Presence
from hub.transport import Hub, parse_broker_url
from ledger import Identity

pytestmark = pytest.mark.skipif(broker_kind() != "mosquitto", reason="the ACL is mosquitto's (the embedded broker is a development fallback)")

SIGNER = Identity.from_seed(b"s" * 32)
BODY = Presence(machine_id="m-any", state="online", session="s", kind="drone", region="north", territory=("north",))


def family_topics(me: str, other: str, job: str) -> dict[str, str]:
    """One concrete topic per family; ``own:`` ones are under the sender's own machines/{me}/."""
    out = {
        "cfp": topics.cfp("north", "printer_3d"),
        "service-cfp": topics.service("north"),
        "bids": topics.bids(job),
        "offers": topics.offers(job),
        "award": topics.award(job),
        "events": topics.events(job),
    }
    for name, make in (("presence", topics.presence), ("telemetry", topics.telemetry), ("handoff", topics.handoff),
                       ("control", topics.control), ("control-result", topics.control_result), ("governance", topics.governance)):
        out[f"own:{name}"] = make(me)
        out[name] = make(other)
    return out


MACHINE_OWN = {"own:presence", "own:telemetry", "own:handoff", "own:control-result"}
PUBLISHES: dict[Role, set[str]] = {
    "machine": MACHINE_OWN | {"bids", "offers", "events"},
    "requester": {"cfp", "service-cfp", "award", "events"},
    "steward": {"service-cfp", "award", "events", "governance"},
    "technician": {"bids", "events"},
    "console": {"control", "governance"},
    "operator": {"control"},
    "auditor": set(),
}
"""What each role may publish on (docs/protocol.md, "Who may publish and read what")."""

READS: dict[Role, set[str]] = {
    "machine": {"cfp", "service-cfp", "award", "events", "own:control", "own:governance"},
    "requester": {"bids", "offers", "events", "presence"},
    "steward": {"cfp", "service-cfp", "bids", "offers", "award", "events", "presence"},
    "technician": {"service-cfp", "award", "events"},
    "console": {"telemetry", "presence", "governance", "events", "handoff", "control-result"},
    "operator": {"handoff", "control-result", "telemetry", "presence"},
    "auditor": {"cfp", "service-cfp", "award", "events", "presence", "telemetry", "handoff", "governance", "control",
                "control-result"},
}
"""What each role may read; a machine's ``own:`` topics are its control and governance only."""


class Heard:
    def __init__(self) -> None:
        self.topics: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, env: Envelope) -> None:
        with self.lock:
            self.topics.append(topic)


def _until_quiet(read: Callable[[], object], quiet_s: float = 0.4, timeout: float = 10.0) -> None:
    """Wait until ``read()`` stops changing for ``quiet_s`` (everything sent has landed)."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def test_anonymous_and_wrong_password_connections_are_refused(broker: RunningBroker) -> None:
    with pytest.raises(BrokerRefused, match="refused an anonymous connection"):
        Hub(broker.url, name="anonymous").connect(timeout_s=5)
    good = parse_broker_url(broker.admit("acl-known", "auditor"))
    with pytest.raises(BrokerRefused, match="refused user 'acl-known'"):
        Hub(f"mqtt://acl-known:not-the-password@{good.host}:{good.port}", name="guess").connect(timeout_s=5)
    with Hub(broker.admit("acl-known", "auditor"), name="known") as hub:  # the real one gets in
        assert hub.connected


def test_every_role_publishes_only_on_its_own_topic_families(broker: RunningBroker) -> None:
    """Every role × every topic family: what arrives at readers that may read everything between
    them (an auditor, a requester, and the machine whose topics these are) is exactly what the
    sender's role may publish; each refused publish is counted by the sender (MQTT 5 reason 135)."""
    run = uuid.uuid4().hex[:6]
    target = f"m-target-{run}"  # the "other" machine whose topics strangers try
    heard = Heard()
    readers = [Hub(broker.admit(f"acl-audit-{run}", "auditor"), name="auditor").connect(),
               Hub(broker.admit(f"acl-req-{run}", "requester"), name="requester").connect()]
    for reader in readers:
        reader.subscribe(f"{topics.PREFIX}/#", heard)
    senders: dict[Role, Hub] = {}
    try:
        for role in ROLES:
            senders[role] = Hub(broker.admit(f"acl-{role}-{run}", role), name=f"send-{role}").connect()
        time.sleep(0.3)
        expected: set[str] = set()
        sent: set[str] = set()
        sent_denied: dict[Role, int] = {}
        for role, hub in senders.items():
            me = f"acl-{role}-{run}"
            fams = family_topics(me, target, f"j-{role}-{run}")
            if role != "machine":  # only a machine has topics of its own
                fams = {k: v for k, v in fams.items() if not k.startswith("own:")}
            denied = 0
            for family, topic in fams.items():
                hub.send(topic, BODY, SIGNER)
                sent.add(topic)
                if family in PUBLISHES[role]:
                    expected.add(topic)
                else:
                    denied += 1
            sent_denied[role] = denied
        _until_quiet(lambda: (len(heard.topics), sum(h.stats["refused"] for h in senders.values())))
        arrived = set(heard.topics) & sent  # (other tests' machines left their presence retained on this broker)
        assert arrived == expected, (
            f"arrived but not allowed: {sorted(arrived - expected)}; allowed but lost: {sorted(expected - arrived)}")
        assert {role: hub.stats["refused"] for role, hub in senders.items()} == sent_denied
    finally:
        for hub in [*readers, *senders.values()]:
            hub.close()


def test_every_role_reads_only_what_its_role_needs(broker: RunningBroker) -> None:
    """Each role subscribes to everything (``tamc/v3/#``: the broker grants the subscription and
    filters every delivery); allowed publishers send one message per family; each reader receives
    exactly its role's families. Nobody but a requester (or the steward hiring technicians) hears
    a bid."""
    run = uuid.uuid4().hex[:6]
    readers: dict[Role, tuple[Hub, Heard]] = {}
    publishers: list[Hub] = []
    try:
        for role in ROLES:
            heard = Heard()
            hub = Hub(broker.admit(f"read-{role}-{run}", role), name=f"read-{role}").connect()
            hub.subscribe(f"{topics.PREFIX}/#", heard)
            readers[role] = (hub, heard)
        machine_reader = f"read-machine-{run}"
        other = f"m-other-{run}"
        as_requester = Hub(broker.admit(f"pub-req-{run}", "requester"), name="pub-req").connect()
        as_console = Hub(broker.admit(f"pub-console-{run}", "console"), name="pub-console").connect()
        as_other = Hub(broker.admit(other, "machine"), name="pub-machine").connect()
        publishers += [as_requester, as_console, as_other]
        time.sleep(0.3)
        job = f"j-read-{run}"
        sent: dict[str, str] = {}  # topic -> family, as the machine reader sees it
        for family, topic in family_topics(other, other, job).items():
            if family.startswith("own:"):
                continue
            hub = {"cfp": as_requester, "service-cfp": as_requester, "award": as_requester, "control": as_console,
                   "governance": as_console}.get(family, as_other)
            hub.send(topic, BODY, SIGNER)
            sent[topic] = family
        for family in ("control", "governance"):  # the machine reader's own control and governance
            topic = family_topics(machine_reader, other, job)[f"own:{family}"]
            as_console.send(topic, BODY, SIGNER)
            sent[topic] = f"own:{family}"
        assert not any(h.stats["refused"] for h in publishers)
        _until_quiet(lambda: tuple(len(h.topics) for _, h in readers.values()))
        for role, (_, heard) in readers.items():
            # the machine reader's own topics are of the same family as anyone else's to the other roles
            got = {sent[t] if role == "machine" else sent[t].removeprefix("own:") for t in heard.topics if t in sent}
            assert got == READS[role], f"{role} read {sorted(got)}, should read {sorted(READS[role])}"
        assert [role for role, (_, h) in readers.items() if any(sent.get(t) == "bids" for t in h.topics)] == ["requester", "steward"]
    finally:
        for hub in [*publishers, *(h for h, _ in readers.values())]:
            hub.close()
