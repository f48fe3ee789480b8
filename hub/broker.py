"""Start a private MQTT broker on a free loopback port: mosquitto when installed, else amqtt in
process, so a fresh machine needs nothing installed by hand. ``--broker URL`` skips all this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from core.errors import BrokerStartFailed
from core.net import free_port, wait_for_port
from hub.envelope import MAX_ENVELOPE_BYTES

__all__ = ["MAX_PACKET_BYTES", "BrokerKind", "RunningBroker", "find_mosquitto", "start_broker"]

MAX_PACKET_BYTES = MAX_ENVELOPE_BYTES + 1024
"""mosquitto's ``max_packet_size``: an envelope at the protocol's limit, its topic and MQTT's header.
A client that sends a larger packet is disconnected by the broker, so it never reaches a receiver."""

log = logging.getLogger("tamc.broker")

BrokerKind = Literal["mosquitto", "embedded", "external"]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


class RunningBroker:
    """A broker this process started (or an external one it was pointed at)."""

    def __init__(self, kind: BrokerKind, url: str, stop: list[object] | None = None) -> None:
        self.kind = kind
        self.url = url
        self._stops = stop or []

    def stop(self) -> None:
        while self._stops:
            action = self._stops.pop()
            if callable(action):
                action()


@contextlib.contextmanager
def start_broker(prefer: Literal["auto", "mosquitto", "embedded"] = "auto", *, port: int | None = None) -> Iterator[RunningBroker]:
    """Run a broker for the duration of the ``with`` block; ``.url`` is where to connect."""
    binary = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if prefer == "mosquitto" and binary is None:
        raise BrokerStartFailed("mosquitto is not installed (apt-get install mosquitto), or ask for the embedded broker")
    broker = _start_mosquitto(binary, port or free_port()) if binary else _start_embedded(port or free_port())
    log.info("broker started kind=%s url=%s", broker.kind, broker.url)
    try:
        yield broker
    finally:
        broker.stop()


def _start_mosquitto(binary: str, port: int) -> RunningBroker:
    workdir = Path(tempfile.mkdtemp(prefix="tamc-mosquitto-"))
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        "max_queued_messages 100000\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\n",
        "utf-8",
    )
    errors = workdir / "stderr.txt"
    with errors.open("wb") as err_file:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)  # a Ctrl-C to our terminal is ours to handle: we stop it last
    if not wait_for_port("127.0.0.1", port, 10.0):
        proc.kill()
        proc.wait(5)
        err = errors.read_text("utf-8", errors="replace").strip()
        shutil.rmtree(workdir, ignore_errors=True)
        raise BrokerStartFailed(f"mosquitto did not listen on 127.0.0.1:{port}: {err or 'no output'}")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    return RunningBroker("mosquitto", f"mqtt://127.0.0.1:{port}", [stop])


def _start_embedded(port: int) -> RunningBroker:
    from amqtt.broker import Broker  # imported here: only machines without mosquitto pay for it

    config = {
        # amqtt's default listener binds 0.0.0.0:1883; always say where to listen.
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    for noisy in ("amqtt", "transitions"):  # both log every session state change at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []
    broker: list[Broker] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            b = Broker(config, loop=loop)
            loop.run_until_complete(b.start())
            broker.append(b)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
    thread.start()
    ready.wait(15)
    if failure or not broker:
        raise BrokerStartFailed(f"the embedded broker could not listen on 127.0.0.1:{port}: {failure[0] if failure else 'timeout'}")

    def stop() -> None:
        fut = asyncio.run_coroutine_threadsafe(broker[0].shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        if not thread.is_alive():
            loop.close()

    return RunningBroker("embedded", f"mqtt://127.0.0.1:{port}", [stop])
