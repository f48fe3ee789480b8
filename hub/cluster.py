"""A broker cluster for TAMC: NATS server nodes clustered on one host (or told of each other's
routes), serving MQTT 3.1.1 with JetStream, so a market outgrows one broker and survives a node.

What a node of the cluster keeps (sessions, queued QoS 1 messages, retained presence) lives in
JetStream streams replicated to every node (``stream_replicas`` = the cluster's size, up to 3): a
node killed outright loses nothing acknowledged, and a client's persistent session resumes on any
node. Only the delivery state of a subscription (a JetStream consumer) is kept on one node, on disk
(``consumer_replicas`` 1: subscribing per job costs ~4 ms, not ~350 ms): while that node is down,
the sessions whose consumers live there wait for it to come back, and lose nothing (the fault
campaign measured pauses of several seconds for the participants whose node died; with
``consumer_replicas=3`` a session moves at once, and each subscription costs ~350 ms). A cluster of three keeps serving with one node down (a quorum of two); with two down it
refuses connections until one is back.

Who may connect and what each may publish and read is ``hub.access``'s ``GRANTS``, written as NATS
permissions: an MQTT topic is a NATS subject with ``/`` as ``.``, ``+`` as ``*`` and ``#`` as
``>`` (ids in topics hold no dot: ``hub.topics.level``). A user reading with QoS 1 also needs
``$MQTT.sub.>`` (NATS 2.9). Unlike mosquitto, NATS answers a publish it refuses with a PUBACK all
the same and drops it (the server logs it): a sender is not told. Passwords are in the nodes'
configuration files (0600), as NATS reads them.

``NatsCluster`` runs one for tests, benchmarks and the fault campaign; docs/operators.md says how
to run one for real (and the EMQX equivalent).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from core.errors import BrokerStartFailed
from core.files import write_private
from core.net import free_port, wait_for_port
from hub.access import BrokerUser, BrokerUsers, Grant, Role, grant
from hub.topics import PREFIX

__all__ = ["NatsCluster", "find_nats", "nats_node_config", "subject"]

log = logging.getLogger("tamc.hub.cluster")

READY_S = 60.0
"""How long a node may take to serve MQTT (a first start creates the replicated streams; a
restarted node catches up with the others)."""


def find_nats() -> str | None:
    return shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server")
                                                if Path(p).is_file()), None)


def subject(topic: str) -> str:
    """An MQTT topic filter as the NATS subject (filter) it is: ``/`` → ``.``, ``+`` → ``*``, ``#`` → ``>``."""
    return ".".join({"+": "*", "#": ">"}.get(part, part) for part in topic.split("/"))


def _permissions(allowed: Grant) -> dict[str, list[str]]:
    return {"publish": sorted({subject(t) for t in allowed.publish}),
            "subscribe": sorted({subject(t) for t in allowed.read} | {"$MQTT.sub.>"})}


def nats_node_config(name: str, folder: Path, ports: dict[str, int], routes: list[int], users: list[BrokerUser],
                     replicas: int, consumer_replicas: int = 1) -> str:
    """One node's configuration (NATS's own format, of which JSON is a subset)."""
    config: dict[str, Any] = {
        "server_name": name,
        "listen": "127.0.0.1:-1",  # NATS's own clients: none here, any free port
        "jetstream": {"store_dir": str(folder / "jetstream"), "max_memory_store": 256 << 20, "max_file_store": 4 << 30},
        "mqtt": {"listen": f"127.0.0.1:{ports['mqtt']}", "stream_replicas": replicas, "ack_wait": "10s",
                 # QoS 1 messages out to one subscription before it acknowledges them; a session's
                 # subscriptions may hold 65,535 in all, and TAMC subscribes per job: at 1,000 a
                 # machine's 66th subscription was refused (the long campaign), at 64 it may hold 1,023
                 "max_ack_pending": 64,
                 # a subscription's delivery state (a JetStream consumer) on one node, on disk: a QoS 1
                 # subscription then takes ~4 ms instead of ~350 ms (a raft group of three per
                 # subscription, and TAMC subscribes per job)
                 "consumer_replicas": consumer_replicas},
        "accounts": {
            "TAMC": {"jetstream": "enabled",
                     "users": [{"user": u.name, "password": u.password, "permissions": _permissions(grant(u.role, u.name))}
                               for u in users]},
        },
        "max_payload": 1 << 20,
        "debug": False,
        "logfile": str(folder / "nats.log"),
    }
    if routes:
        config["cluster"] = {"name": "tamc", "listen": f"127.0.0.1:{ports['cluster']}",
                             "routes": [f"nats-route://127.0.0.1:{p}" for p in routes]}
    return json.dumps(config, indent=2)


class _Node:
    def __init__(self, index: int, folder: Path) -> None:
        self.name = f"n{index + 1}"
        self.folder = folder / self.name
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ports = {"cluster": free_port(), "mqtt": free_port()}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.folder / "nats.conf"


class NatsCluster:
    """``with NatsCluster(folder) as cluster: url = cluster.admit("m1", "machine", node=1)``; the
    fault campaign ``kill``s and ``start``s nodes by index."""

    def __init__(self, folder: Path, nodes: int = 3, *, consumer_replicas: int = 1) -> None:
        binary = find_nats()
        if binary is None:
            raise BrokerStartFailed("nats-server is not installed (apt-get install nats-server)")
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.users = BrokerUsers(self.folder / "users.json")
        self.nodes = [_Node(i, self.folder) for i in range(nodes)]
        self.replicas = min(nodes, 3)
        self.consumer_replicas = min(consumer_replicas, self.replicas)
        """1 (the default): subscribing is cheap, and a session whose consumers lived on a dead node
        waits for it; 3: sessions move to another node at once, and each subscription costs a
        replicated consumer (~350 ms)."""
        self._lock = threading.Lock()
        self._probe, _ = self.users.add("cluster-probe", "machine")
        self._write()
        try:
            for i in range(nodes):
                self._launch(i, first=True)
            for i in range(nodes):
                self._wait_ready(i)
        except BaseException:
            self.close()
            raise

    # -- who may connect ---------------------------------------------------------------------

    def url(self, node: int, user: BrokerUser | None = None) -> str:
        """A node's MQTT URL, with ``user``'s credentials if given and the other nodes to fail over to."""
        port = self.nodes[node].ports["mqtt"]
        others = ",".join(f"127.0.0.1:{n.ports['mqtt']}" for i, n in enumerate(self.nodes) if i != node)
        query = f"?mqtt=3.1.1&failover={others}" if others else "?mqtt=3.1.1"
        return user.url("127.0.0.1", port, query) if user else f"mqtt://127.0.0.1:{port}{query}"

    def node_of(self, name: str) -> int:
        """The node a participant connects to unless told: spread by name, the same each time."""
        return zlib.crc32(name.encode()) % len(self.nodes)

    def admit(self, name: str, role: Role, node: int | None = None) -> str:
        return self.admit_all([(name, role)], node=node)[name]

    def admit_all(self, who: list[tuple[str, Role]], node: int | None = None) -> dict[str, str]:
        """The URLs ``who`` connect with (to ``node``, or each to its own ``node_of``); new users are
        written into every node's configuration and the running nodes reload it."""
        with self._lock:
            added = [made[0] for name, role in who if (made := self.users.add(name, role))[1]]
            if added:
                self._write()
                for n in self.nodes:
                    if n.proc is not None and n.proc.poll() is None:
                        n.proc.send_signal(signal.SIGHUP)
                for i, n in enumerate(self.nodes):
                    if n.proc is not None and n.proc.poll() is None:
                        self._wait_login(i, added[-1])
        return {name: self.url(self.node_of(name) if node is None else node, self.users.get(name)) for name, _ in who}

    # -- nodes ---------------------------------------------------------------------------------

    def kill(self, node: int) -> None:
        """SIGKILL a node: no goodbye to its clients, nothing flushed."""
        n = self.nodes[node]
        if n.proc is None:
            return
        n.proc.send_signal(signal.SIGKILL)
        n.proc.wait(10)
        n.proc = None

    def start(self, node: int) -> None:
        """Start a node again from its folder (same ports, same store) and wait until it serves MQTT."""
        self._launch(node)
        self._wait_ready(node)

    def close(self) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(5)
                n.proc = None

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> None:
        users = list(self.users)
        for n in self.nodes:
            routes = [o.ports["cluster"] for o in self.nodes if o is not n]
            write_private(n.conf, nats_node_config(n.name, n.folder, n.ports, routes, users, self.replicas,
                                                   self.consumer_replicas))

    def _launch(self, node: int, *, first: bool = False) -> None:
        """Start a node; on its first start, a port another process took meanwhile is traded for a
        free one (later starts keep theirs: the other nodes and the clients know them)."""
        n = self.nodes[node]
        for _ in range(5 if first else 1):
            with (n.folder / "stderr.txt").open("ab") as err:
                n.proc = subprocess.Popen([self.binary, "-c", str(n.conf)], stdout=subprocess.DEVNULL, stderr=err,
                                          start_new_session=True)
            if wait_for_port("127.0.0.1", n.ports["mqtt"], 15.0) and n.proc.poll() is None:
                return
            n.proc.kill()
            n.proc.wait(5)
            n.proc = None
            if first:
                n.ports = {"cluster": free_port(), "mqtt": free_port()}
                self._write()
        raise BrokerStartFailed(f"NATS node {n.name} did not listen for MQTT on {n.ports['mqtt']}: see {n.folder / 'nats.log'}")

    def _wait_ready(self, node: int) -> None:
        """Until the node serves MQTT: a login and a QoS 1 subscription granted (its streams are up)."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if _subscribes(self.nodes[node].ports["mqtt"], self._probe):
                return
            time.sleep(0.2)
        raise BrokerStartFailed(f"NATS node {self.nodes[node].name} did not serve MQTT in {READY_S:.0f} s: "
                                f"see {self.nodes[node].folder / 'nats.log'}")

    def _wait_login(self, node: int, user: BrokerUser, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not _subscribes(self.nodes[node].ports["mqtt"], user, probe=False):
            if time.monotonic() > deadline:
                raise BrokerStartFailed(f"NATS node {self.nodes[node].name} did not take {user.name}'s login after a reload")
            time.sleep(0.1)


def _subscribes(port: int, user: BrokerUser, *, probe: bool = True) -> bool:
    """Log in as ``user``; with ``probe`` (a machine's login), also subscribe at QoS 1 and receive
    a QoS 1 message of its own there: the node's replicated streams carry messages."""
    done = threading.Event()
    ok: list[bool] = []
    topic = f"{PREFIX}/jobs/cluster-probe/events"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{user.name}-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.username_pw_set(user.name, user.password)

    def on_connect(c: mqtt.Client, _: Any, __: Any, reason: Any, ___: Any) -> None:
        if reason.is_failure or not probe:
            ok.append(not reason.is_failure)
            done.set()
        else:
            c.subscribe(topic, qos=1)

    def on_subscribe(c: mqtt.Client, _: Any, __: Any, codes: list[Any], ___: Any) -> None:
        if any(code.is_failure for code in codes):
            ok.append(False)
            done.set()
        else:
            c.publish(topic, b"probe", qos=1)

    def on_message(c: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        ok.append(True)
        done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        done.wait(8.0)
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()
    return bool(ok) and ok[0]
