"""Start a private MQTT broker on a free loopback port: mosquitto when installed, else amqtt in
process, so a fresh machine needs nothing installed by hand. ``--broker URL`` skips all this.

mosquitto runs with authentication and topic ACLs on (``hub.access``): nobody connects without a
user the broker was given, and each user publishes and reads only what its role allows. A
participant is admitted with ``RunningBroker.admit(name, role)``, which returns the URL it
connects with (its credentials in it); a user added while the broker runs is loaded by a reload
(SIGHUP), and ``admit`` returns once the broker takes the new login. The embedded broker is a
development-only fallback: it authenticates nobody and says so when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from core.errors import BrokerStartFailed, InputError
from core.net import free_port, wait_for_port
from hub.access import BrokerUser, BrokerUsers, Role
from hub.envelope import MAX_ENVELOPE_BYTES

__all__ = ["EMBEDDED_WARNING", "MAX_CONNECTIONS", "MAX_PACKET_BYTES", "BrokerHome", "BrokerKind", "RunningBroker", "external", "find_mosquitto",
           "mosquitto_config", "start_broker", "wait_for_login"]

MAX_PACKET_BYTES = MAX_ENVELOPE_BYTES + 1024
"""mosquitto's ``max_packet_size``: an envelope at the protocol's limit, its topic and MQTT's header.
A client that sends a larger packet is disconnected by the broker, so it never reaches a receiver."""

MAX_CONNECTIONS = 10_000
"""Clients one mosquitto listener takes at once (the scale target is 1,000 machines): a client that
opens connections without end is refused past it, and those already connected carry on."""

EMBEDDED_WARNING = ("the embedded broker is a development-only fallback: it lets anyone connect and read or publish on "
                    "any topic (no authentication, no topic ACL); install mosquitto (apt-get install mosquitto) for a "
                    "broker that enforces both")

log = logging.getLogger("tamc.broker")

BrokerKind = Literal["mosquitto", "embedded", "external"]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


class RunningBroker:
    """A broker this process started (or an external one it was pointed at), and who may use it."""

    def __init__(self, kind: BrokerKind, url: str, stop: list[object] | None = None, *, users: BrokerUsers | None = None,
                 reload: Callable[[list[BrokerUser]], None] | None = None, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.kind = kind
        self.url = url
        """Where the broker listens, without credentials."""
        self.users = users
        """Its users (None: it authenticates nobody, or they are not ours to manage)."""
        self._reload = reload
        self.proc = proc
        """The broker's process, when this one started it."""
        self.home: Path | None = None
        """The folder of its users and ACL, when TAMC runs it (a city pointed at it admits its participants there)."""
        self._stops = stop or []
        self._lock = threading.Lock()

    @property
    def authenticates(self) -> bool:
        return self.users is not None

    def admit(self, name: str, role: Role) -> str:
        """The URL ``name`` connects with in ``role``: a user of this broker (added, and the broker
        reloaded, if new). An external broker's URL is returned as given (its credentials, if any,
        are the operator's); the embedded one takes anyone."""
        return self.admit_all([(name, role)])[name]

    def admit_all(self, who: list[tuple[str, Role]]) -> dict[str, str]:
        """``admit`` for many at once, with one reload."""
        if self.users is None:
            return {name: self.url for name, _ in who}
        with self._lock:
            added = [user for name, role in who if (made := self.users.add(name, role))[1] for user in (made[0],)]
            if added and self._reload is not None:
                self._reload(added)
        parts = urlsplit(self.url)
        query = f"?{parts.query}" if parts.query else ""
        return {name: self.users.get(name).url(parts.hostname or "127.0.0.1", parts.port or 1883, query) for name, _ in who}

    def stop(self) -> None:
        while self._stops:
            action = self._stops.pop()
            if callable(action):
                action()


@contextlib.contextmanager
def start_broker(prefer: Literal["auto", "mosquitto", "embedded"] = "auto", *, port: int | None = None,
                 home: BrokerHome | None = None, host: str = "127.0.0.1", persistence: bool = False) -> Iterator[RunningBroker]:
    """Run a broker for the duration of the ``with`` block; ``.url`` is where it listens and
    ``.admit(name, role)`` the URL a participant connects with. mosquitto keeps its users and files
    in ``home`` (a temporary folder, removed after, by default)."""
    binary = find_mosquitto() if prefer in ("auto", "mosquitto") else None
    if prefer == "mosquitto" and binary is None:
        raise BrokerStartFailed("mosquitto is not installed (apt-get install mosquitto), or ask for the embedded broker")
    if binary:
        broker = _start_mosquitto(binary, port or free_port(), home, host, persistence=persistence)
    elif host != "127.0.0.1":
        raise BrokerStartFailed("the embedded broker listens on 127.0.0.1 only (it authenticates nobody): install mosquitto")
    else:
        broker = _start_embedded(port or free_port())
    log.info("broker started kind=%s url=%s auth=%s", broker.kind, broker.url, broker.authenticates)
    try:
        yield broker
    finally:
        broker.stop()


def mosquitto_config(port: int, workdir: Path, *, host: str = "127.0.0.1", persistence: bool = False) -> str:
    """mosquitto 2.0's configuration for a TAMC broker: no anonymous clients, the users and ACL
    written beside it (``passwd``, ``acl``), the protocol's packet limit, Nagle off."""
    return (
        # run as whoever owns these 0600 files: started as root, mosquitto would otherwise switch to
        # its own user and be unable to read them (as a non-root user this line changes nothing)
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"listener {port} {host}\n"
        f"max_connections {MAX_CONNECTIONS}\n"
        "allow_anonymous false\n"
        f"password_file {workdir / 'passwd'}\n"
        f"acl_file {workdir / 'acl'}\n"
        "set_tcp_nodelay true\n"
        f"persistence {'true' if persistence else 'false'}\n"
        # saved every second: a broker killed outright loses at most the last second of what it held,
        # which the senders' own retries cover (docs/protocol.md, "Surviving faults")
        + (f"persistence_location {workdir}/\nautosave_interval 1\n" if persistence else "")
        + "max_queued_messages 100000\n"  # per client: a subscriber slow for a moment on a busy day loses nothing
        "max_inflight_messages 1000\n"  # QoS 1 messages out to one client before it has acknowledged them
        "max_keepalive 300\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )


class BrokerHome:
    """The folder of a mosquitto that TAMC runs: its users (``users.json``), the ``passwd`` and
    ``acl`` files made from them, ``mosquitto.conf`` and, while it runs, ``mosquitto.pid``. Whoever
    can write the folder admits participants; a running broker reloads on SIGHUP."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.users = BrokerUsers(self.root / "users.json")

    @property
    def pid_file(self) -> Path:
        return self.root / "mosquitto.pid"

    @property
    def url(self) -> str | None:
        """Where the broker last started from this folder listens (``mqtt://host:port``), if it did."""
        path = self.root / "address"
        return path.read_text("utf-8").strip() if path.exists() else None

    def announce(self, url: str) -> None:
        """Record where participants reach the broker (``tamc broker add`` prints URLs for it)."""
        (self.root / "address").write_text(f"{url}\n", "utf-8")

    def admit(self, name: str, role: Role) -> BrokerUser:
        """Add ``name`` in ``role`` (or find it); a broker running from this folder loads it at once."""
        user, new = self.users.add(name, role)
        if new:
            self.write()
            if (url := self.url) and self.running_pid() is not None:
                parts = urlsplit(url)
                self.reloader(parts.hostname or "127.0.0.1", parts.port or 1883)([user])
        return user

    def write(self) -> None:
        self.users.write_mosquitto(self.root / "passwd", self.root / "acl")

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def reloader(self, host: str, port: int) -> Callable[[list[BrokerUser]], None]:
        """What ``RunningBroker`` calls after adding users: rewrite the files, SIGHUP, wait for the logins."""

        def reload(added: list[BrokerUser]) -> None:
            self.write()
            pid = self.running_pid()
            if pid is None:
                raise BrokerStartFailed(f"no broker runs from {self.root} to load the new users ({self.pid_file} names none)")
            os.kill(pid, signal.SIGHUP)
            for user in added:
                wait_for_login(host, port, user)

        return reload


def _start_mosquitto(binary: str, port: int, home: BrokerHome | None, host: str = "127.0.0.1", *,
                     persistence: bool = False) -> RunningBroker:
    own = home is None
    home = home or BrokerHome(Path(tempfile.mkdtemp(prefix="tamc-mosquitto-")))
    folder = home.root
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    home.write()
    conf = folder / "mosquitto.conf"
    conf.write_text(mosquitto_config(port, folder, host=host, persistence=persistence), "utf-8")
    errors = folder / "stderr.txt"
    with errors.open("wb") as err_file:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err_file,
                                start_new_session=True)  # a Ctrl-C to our terminal is ours to handle: we stop it last
    home.pid_file.write_text(str(proc.pid))
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    home.announce(f"mqtt://{reach}:{port}")
    if not wait_for_port(reach, port, 10.0):
        proc.kill()
        proc.wait(5)
        err = errors.read_text("utf-8", errors="replace").strip()
        if own:
            shutil.rmtree(folder, ignore_errors=True)
        raise BrokerStartFailed(f"mosquitto did not listen on {host}:{port}: {err or 'no output'}")

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        home.pid_file.unlink(missing_ok=True)
        if own:
            shutil.rmtree(folder, ignore_errors=True)

    running = RunningBroker("mosquitto", f"mqtt://{reach}:{port}", [stop], users=home.users,
                            reload=home.reloader(reach, port), proc=proc)
    running.home = folder
    return running


def wait_for_login(host: str, port: int, user: BrokerUser, timeout_s: float = 10.0) -> None:
    """Return once the broker accepts ``user``'s login (a reload is asynchronous), or raise."""
    deadline = time.monotonic() + timeout_s
    while not _logs_in(host, port, user):
        if time.monotonic() > deadline:
            raise BrokerStartFailed(f"the broker at {host}:{port} did not take user {user.name!r} after a reload")
        time.sleep(0.02)


def _logs_in(host: str, port: int, user: BrokerUser) -> bool:
    """One MQTT 3.1.1 CONNECT with ``user``'s credentials: does the broker accept it (CONNACK 0)?
    A plain socket: no client thread to start and stop for a yes or no."""

    def field(text: str) -> bytes:
        raw = text.encode("utf-8")
        return len(raw).to_bytes(2, "big") + raw

    body = field("MQTT") + bytes([4, 0xC2]) + (5).to_bytes(2, "big")  # level 4, user+password+clean session, keepalive 5 s
    body += field(f"tamc-probe-{os.getpid()}-{time.monotonic_ns()}") + field(user.name) + field(user.password)
    length, encoded = len(body), b""
    while True:  # MQTT's variable-length remaining length
        length, digit = divmod(length, 128)
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            break
    try:
        with socket.create_connection((host, port), timeout=2.0) as sock:
            sock.sendall(b"\x10" + encoded + body)
            answer = sock.recv(4)
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return False
    return len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0


def _start_embedded(port: int) -> RunningBroker:
    from amqtt.broker import Broker  # imported here: only machines without mosquitto pay for it

    config = {
        # amqtt's default listener binds 0.0.0.0:1883; always say where to listen.
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    log.warning(EMBEDDED_WARNING)
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

    # amqtt speaks MQTT 3.1.1 only: the URL says so, and hubs connect with it
    return RunningBroker("embedded", f"mqtt://127.0.0.1:{port}?mqtt=3.1.1", [stop])


def external(url: str, home: Path | None = None) -> RunningBroker:
    """A broker someone else runs. With ``home`` (the folder of a broker ``tamc broker serve`` runs),
    each participant gets its own user there; without, everyone connects with ``url`` as given."""
    if home is None:
        return RunningBroker("external", url)
    found = BrokerHome(home)
    if not found.root.is_dir():
        raise InputError(f"{home}: no broker folder there (made by 'tamc broker serve --home {home}')")
    address = urlsplit(url if "://" in url else f"mqtt://{url}")
    return RunningBroker("external", url, users=found.users,
                         reload=found.reloader(address.hostname or "127.0.0.1", address.port or 1883))
