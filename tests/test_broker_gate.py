"""The broker's gate (``hub.gate``) caps how fast one address opens connections: an address that
connects in a loop is refused past its burst, counted, while clients already connected carry on
and another address connects and talks as usual. On the real mosquitto, over real sockets; the
flooding and honest clients use different loopback addresses (127.0.0.1 and 127.0.0.2)."""

from __future__ import annotations

import queue
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from conftest import broker_kind
from paho.mqtt.enums import CallbackAPIVersion

from hub.broker import RunningBroker
from hub.gate import ConnectionGate, open_gate

pytestmark = pytest.mark.skipif(broker_kind() != "mosquitto", reason="the gate fronts a TAMC-run mosquitto")


@pytest.fixture
def gate(broker: RunningBroker) -> Iterator[tuple[ConnectionGate, int]]:
    inner = urlsplit(broker.url)
    g = ConnectionGate((inner.hostname or "127.0.0.1", inner.port or 1883), burst=5, per_s=1.0)
    with open_gate(g, "127.0.0.1", 0) as (_, port):
        yield g, port


def client(broker: RunningBroker, name: str, role: str, port: int, source: str, inbox: queue.Queue[bytes] | None = None) -> mqtt.Client:
    url = urlsplit(broker.admit(name, role))  # type: ignore[arg-type]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.username_pw_set(url.username, url.password)
    if inbox is not None:
        c.on_message = lambda _c, _u, msg: inbox.put(msg.payload)
    c.connect("127.0.0.1", port, bind_address=source)
    c.loop_start()
    return c


def connect_packet(user: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT, by hand: what a client in a reconnect loop sends."""
    def text(s: str) -> bytes:
        return struct.pack("!H", len(s)) + s.encode()
    body = text("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30) + text("flood") + text(user) + text(password)
    return bytes([0x10, len(body)]) + body


def test_an_address_connecting_in_a_loop_is_cut_off_and_honest_clients_carry_on(broker: RunningBroker,
                                                                                 gate: tuple[ConnectionGate, int]) -> None:
    g, port = gate
    seen: queue.Queue[bytes] = queue.Queue()
    auditor = client(broker, "gate-auditor", "auditor", port, "127.0.0.2", seen)  # connected before the flood
    auditor.subscribe("tamc/v3/machines/gate-m1/telemetry", qos=1)  # the session broker holds other tests' retained telemetry
    flood = urlsplit(broker.admit("gate-flood", "auditor"))
    answered = 0
    for _ in range(60):  # the flood: 60 logins as fast as the loop goes, from 127.0.0.1
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(connect_packet(flood.username or "", flood.password or ""))
                answered += s.recv(4)[:1] == b"\x20"  # CONNACK, or nothing: closed at the door
            except ConnectionResetError:
                pass
    assert answered <= 5 + 2  # the burst, and what refilled at 1 a second meanwhile
    assert g.stats.refused >= 53 and g.stats.refused + g.stats.admitted >= 60

    machine = client(broker, "gate-m1", "machine", port, "127.0.0.2")  # another address gets in at once
    machine.publish("tamc/v3/machines/gate-m1/telemetry", b"still here", qos=1).wait_for_publish(5)
    assert seen.get(timeout=5) == b"still here"  # and the client connected before the flood still hears it
    for c in (machine, auditor):
        c.loop_stop()
        c.disconnect()


def test_a_bucket_refills_at_its_rate() -> None:
    g = ConnectionGate(("127.0.0.1", 1), burst=3, per_s=2.0)
    assert [g.admit("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert g.admit("b", now=0.0)  # another address has its own bucket
    assert not g.admit("a", now=0.4) and g.admit("a", now=0.6)  # 0.6 s at 2 a second: one more


def test_tamc_broker_serve_puts_the_gate_where_participants_connect(tmp_path: Path) -> None:
    """``tamc broker serve`` with a connect rate: ``tamc broker add`` hands out the gate's address,
    and a participant logs in through it."""
    from core.net import free_port

    tamc, home, port = str(Path(sys.executable).with_name("tamc")), tmp_path / "broker", free_port()
    serve = subprocess.Popen([tamc, "broker", "serve", "--port", str(port), "--home", str(home), "--connect-rate", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert f"broker at mqtt://127.0.0.1:{port} (at most 2 new connections a second per address, burst 8)" in line, line
        added = subprocess.run([tamc, "broker", "add", "m1", "--role", "machine", "--home", str(home)], capture_output=True,
                               text=True, timeout=60, check=True).stdout.strip()
        url = urlsplit(added)
        assert url.port == port and url.username == "m1"
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="m1", protocol=mqtt.MQTTv5)
        c.username_pw_set(url.username, url.password)
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.publish("tamc/v3/machines/m1/telemetry", b"hello", qos=1).wait_for_publish(5)  # PUBACKed through the gate
        c.loop_stop()
        c.disconnect()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=20)
    assert serve.returncode == 0
