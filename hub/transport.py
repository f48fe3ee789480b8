"""The MQTT transport: one paho-mqtt 2 connection that publishes sealed envelopes and hands
checked ones to local handlers.

Every received payload is verified once per connection (signature, type, age, replay), then given
to each local handler whose pattern matches; what fails is dropped and counted in ``stats`` by
reason. Several agents can share one ``Hub`` (one socket and thread for a whole simulated fleet);
a machine that needs a last will of its own gets its own ``Hub``.

A hub runs on a clock (``core.clock``): envelopes are stamped and aged on it, and received ones
are handed out through it, so on a virtual clock messages of one instant arrive in a canonical
order and the clock knows what is still in flight; a copy this hub is not owed there (a stray) is
dropped and counted in ``stats["strays"]`` (``hub.flight``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from core.clock import Hold, Timeline, WallClock
from core.errors import BrokerRefused, BrokerUnavailable, EnvelopeRejected, InvalidBrokerUrl
from hub.envelope import Envelope, FloodGuard, ReplayGuard, open_envelope, seal
from hub.flight import flights, topics_match
from hub.messages import Body, CallForProposals
from ledger.identity import Identity

__all__ = ["BROKER_PATIENCE_S", "SESSION_EXPIRY_S", "SESSION_MAX_AGE_MS", "BrokerAddress", "Handler", "Hub", "parse_broker_url"]

log = logging.getLogger("tamc.hub")

Handler = Callable[[str, Envelope], None]
RETAINED_STATE_TYPES = frozenset({"presence", "telemetry"})
BROKER_PATIENCE_S = 120.0
"""How long a long-running participant (``tamc agent``, ``tamc requester``) waits for its broker at
start: one (re)started during an outage, or while a cluster's nodes restart, waits it out."""
SESSION_EXPIRY_S = 24 * 3600
"""How long the broker keeps a persistent session (``Hub(session=…)``) of a participant that is away."""
SESSION_MAX_AGE_MS = 15 * 60 * 1000
"""How old an envelope a persistent session accepts: what the broker queued while it was away
(a requester restarting, a connection cut). Repeats within it are still dropped, by sender and id."""
"""Retained state is judged by its id (replay) but not its age: it is old by design."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    mqtt5: bool = True
    """MQTT 5 (mosquitto: a refused publish is told in its PUBACK) unless the URL says ``?mqtt=3.1.1``
    (the embedded broker, NATS)."""
    failover: tuple[tuple[str, int], ...] = ()
    """The other nodes of a broker cluster (``&failover=host:port,host:port``): a hub that loses its
    node, or cannot reach it, tries the next (its persistent session lives in the cluster)."""

    @property
    def url(self) -> str:
        """Where it is, without the password."""
        who = f"{self.username}@" if self.username else ""
        return f"mqtt://{who}{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user:password@]host:port[?mqtt=3.1.1][&failover=host:port,…]`` (port 1883 by
    default) or raise ``InvalidBrokerUrl``."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise InvalidBrokerUrl(f"{_masked(url)!r}: the port must be a number from 1 to 65535") from None
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise InvalidBrokerUrl(f"{_masked(url)!r} is not a broker address; write it as mqtt://user:password@host:port")
    query = parse_qs(parts.query)
    version = query.get("mqtt", ["5"])[-1]
    if version not in ("5", "3.1.1") or set(query) - {"mqtt", "failover"}:
        raise InvalidBrokerUrl(f"{_masked(url)!r}: the options are mqtt=5 (the default) or mqtt=3.1.1, and "
                               "failover=host:port,host:port (a cluster's other nodes)")
    failover = []
    for node in ",".join(query.get("failover", [])).split(","):
        if node:
            host, _, number = node.rpartition(":")
            if not host or not number.isdigit() or not 0 < int(number) < 65536:
                raise InvalidBrokerUrl(f"{_masked(url)!r}: failover={node!r} is not host:port")
            failover.append((host, int(number)))
    return BrokerAddress(parts.hostname, port, unquote(parts.username) if parts.username else None,
                         unquote(parts.password) if parts.password else None, version == "5", tuple(failover))


def _masked(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Nagle's algorithm holds small request/reply packets back ~40 ms each; turn it off.
    with contextlib.suppress(OSError, AttributeError):  # a unix socket or websocket wrapper has no such option
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Hub:
    def __init__(
        self,
        url: str,
        *,
        name: str = "tamc",
        max_age_ms: int = 30_000,
        keepalive_s: int = 10,
        clock: Timeline | None = None,
        timekeepers: Iterable[str] = (),
        flood: FloodGuard | None = None,
        session: str | None = None,
    ) -> None:
        self.address = parse_broker_url(url)
        self.timekeepers = frozenset(timekeepers)
        """The dids whose calls for proposals set this hub's clock (a node in its own process keeps
        the time of a sped-up market): nobody else's call moves it."""
        self.name = name
        self.clock: Timeline = clock or WallClock()
        """Envelopes are stamped, aged and handed out on it."""
        self.stats: Counter[str] = Counter()
        self._guard = ReplayGuard(max_age_ms=max_age_ms)
        self._flood = flood or FloodGuard()
        """How many envelopes one sender may send it at once, and a second (``hub.envelope.FloodGuard``)."""
        self._lock = threading.Lock()
        self._handlers: dict[str, list[Handler]] = {}
        self._wildcards: list[str] = []
        self._heard: set[str] = set()
        """Patterns the broker has confirmed (on a real clock, as soon as they are asked for)."""
        self._since: dict[str, int] = {}
        """The clock's step each pattern was asked in: on a virtual clock it takes effect after it."""
        self._asked: dict[int, tuple[str, Hold | None]] = {}
        """SUBSCRIBEs not yet acknowledged, by packet id: the broker sends SUBACK once it holds the
        subscription (mosquitto and amqtt add it first), and retained messages after it."""
        self._acked: dict[int, bool] = {}
        """SUBACKs that came before ``subscribe`` had noted their packet id."""
        self._flights = flights(self.clock)
        self._connected = threading.Event()
        self._refused: str | None = None
        """Why the broker refused this connection (bad credentials, not authorized), if it did."""
        self._answered = threading.Event()
        self._pub_lock = threading.Lock()
        self._publishing: dict[int, tuple[str, bytes]] = {}
        """QoS 1 publishes awaiting their PUBACK, by packet id: a refused one is counted and its flight ended."""
        self._acks: dict[int, Any] = {}
        """PUBACKs that came before ``publish`` had noted their packet id."""
        self._closing = False
        self._keepalive = keepalive_s
        self._nodes = [(self.address.host, self.address.port), *self.address.failover]
        self._node = 0
        """The broker node in use (of ``_nodes``: the URL's, then its failover nodes)."""
        self.session = session
        """A persistent session's name (its MQTT client id): the broker keeps its subscriptions and
        queues what they receive while it is away (a restart, a cut), for ``SESSION_EXPIRY_S``."""
        self.client_id = session or f"{name}-{uuid.uuid4().hex[:8]}"
        self._unclaimed: deque[tuple[str, Envelope]] = deque(maxlen=10_000)
        """A persistent session's messages that came before the subscription they are for was made again."""
        address = self.address
        if address.mqtt5:  # a clean start (or not) is asked for at connect
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311,
                                 clean_session=session is None)
        if address.username:
            client.username_pw_set(address.username, address.password)
        client.on_socket_open = _nodelay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        self._client = client

    def set_will(self, topic: str, payload: bytes) -> None:
        """What the broker publishes (retained) if this connection dies without saying goodbye.
        Set before ``connect``."""
        self._client.will_set(topic, payload, qos=1, retain=True)

    # -- connection ---------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> Hub:
        """Connect, retrying with exponential backoff (tenacity) until ``timeout_s``; then paho's
        network thread keeps the connection, reconnecting with backoff and re-subscribing."""
        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(OSError),
                wait=wait_exponential(multiplier=0.05, max=2.0),
                stop=stop_after_delay(timeout_s),
                reraise=False,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        log.info("hub=%s reconnect attempt=%d broker=%s", self.name, attempt.retry_state.attempt_number, self.address.url)
                    self._node = (attempt.retry_state.attempt_number - 1) % len(self._nodes)
                    host, port = self._nodes[self._node]
                    self._client.connect(host, port, **self._connect_options())
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise BrokerUnavailable(
                f"no MQTT broker answers at {self.address.url} ({cause}); start one or pass --broker with a reachable address"
            ) from None
        self._client.loop_start()
        if not self._answered.wait(timeout_s) or self._refused is not None:
            refused = self._refused
            self.close()
            if refused is not None:
                who = f"user {self.address.username!r}" if self.address.username else "an anonymous connection"
                raise BrokerRefused(f"the broker at {self.address.url} refused {who}: {refused}; connect with the "
                                    "credentials the broker's operator gave (mqtt://user:password@host:port, 'tamc broker add')")
            raise BrokerUnavailable(f"the broker at {self.address.url} accepted the socket but did not acknowledge the connection")
        self._flights.join(self)
        return self

    def _connect_options(self) -> dict[str, Any]:
        if self.address.mqtt5 and self.session is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            return {"keepalive": self._keepalive, "clean_start": False, "properties": props}
        if self.address.mqtt5:
            return {"keepalive": self._keepalive, "clean_start": True}
        return {"keepalive": self._keepalive}

    def _fail_over(self) -> None:
        """Point paho's next reconnect at the cluster's next node (none without failover nodes)."""
        if len(self._nodes) < 2 or self._closing:
            return
        self._node = (self._node + 1) % len(self._nodes)
        host, port = self._nodes[self._node]
        self.stats["failovers"] += 1
        log.warning("hub=%s fails over to the broker node %s:%d", self.name, host, port)
        self._client.connect_async(host, port, **self._connect_options())

    def close(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        self._closing = True
        self._flights.leave(self)
        with self._lock:
            asked, self._asked = list(self._asked.values()), {}
        for _, hold in asked:
            if hold is not None:
                hold.release()
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()
            # the client's callbacks are this hub's methods: a cycle the collector would break in any
            # order, closing paho's wake-up sockets unannounced. Cut it, so the client goes with the hub.
            client = self._client
            client.on_connect = client.on_disconnect = client.on_message = client.on_connect_fail = None
            client.on_subscribe = client.on_publish = None

    def __enter__(self) -> Hub:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- publish and subscribe ---------------------------------------------------------------

    def send(self, topic: str, body: Body, identity: Identity, *, retain: bool = False) -> None:
        """Seal ``body`` as ``identity`` at this hub's clock's time and publish it."""
        self.publish(topic, seal(body, identity, ts=self.clock.ms()), retain=retain, what=body.TYPE)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, what: str = "envelope") -> None:
        """Send a sealed envelope with QoS 1 (at least once; receivers drop the repeats)."""
        self.stats["sent"] += 1
        self._flights.sent(topic, payload, what, retain=retain)  # before it can arrive: the clock never sees it as delivered early
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS and self.address.mqtt5:
            with self._pub_lock:  # its PUBACK may have been handled already (never hold a lock across paho's calls)
                early = self._acks.pop(info.mid, None)
                if early is None:
                    self._publishing[info.mid] = (topic, payload)
            if early is not None:
                self._published(topic, payload, early)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.warning("hub=%s publish failed topic=%s rc=%s", self.name, topic, info.rc)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        """MQTT 5 tells a refused publish in its PUBACK (135, not authorized): count it, and end its
        flight (the clock must not wait for a message the broker dropped)."""
        if not self.address.mqtt5:
            return
        with self._pub_lock:
            sent = self._publishing.pop(mid, None)
            if sent is None:
                self._acks[mid] = reason
                return
        self._published(*sent, reason)

    def _published(self, topic: str, payload: bytes, reason: Any) -> None:
        if not getattr(reason, "is_failure", False):
            return
        self.stats["refused"] += 1
        log.warning("hub=%s the broker refused a publish topic=%s reason=%s", self.name, topic, reason)
        self._flights.refused(topic, payload)

    def listens(self, topic: str) -> bool:
        """A subscription in effect matches ``topic``: confirmed by the broker and, on a virtual
        clock, asked in an earlier step (``hub.flight``)."""
        step = self.clock.step
        with self._lock:
            since = self._since
            if topic in self._heard and since[topic] < step:
                return True
            return any(since[p] < step and topics_match(p, topic) for p in self._wildcards if p in self._heard)

    def awaits(self, topic: str) -> bool:
        """A subscription asked in the clock's current step matches ``topic`` (it takes effect after)."""
        step = self.clock.step
        with self._lock:
            return any(s == step and topics_match(p, topic) for p, s in self._since.items())

    def asks(self, topic: str) -> bool:
        """Any subscription this hub holds matches ``topic``."""
        with self._lock:
            return topic in self._handlers or any(topics_match(p, topic) for p in self._wildcards)

    def subscribe(self, pattern: str, handler: Handler) -> None:
        with self._lock:
            handlers = self._handlers.setdefault(pattern, [])
            first = not handlers
            handlers.append(handler)
            if first and ("+" in pattern or "#" in pattern):
                self._wildcards.append(pattern)
            if first:
                self._since[pattern] = self.clock.step if self.clock.virtual else -1
            if first and not self.clock.virtual:
                self._heard.add(pattern)
        if self._unclaimed:  # what a persistent session's broker queued for this pattern before it was asked for again
            with self._lock:
                mine = [(t, e) for t, e in self._unclaimed if topics_match(pattern, t)]
                self._unclaimed = deque(((t, e) for t, e in self._unclaimed if not topics_match(pattern, t)), maxlen=10_000)
            for topic, env in mine:
                self._hand_out([handler], topic, env)
        if first:
            self._flights.subscribing(self, pattern)  # the retained messages it matches are owed before they can come
            # the clock waits for the SUBACK: until then nothing sent to the pattern is owed to this hub
            hold = self.clock.hold(f"subscription {pattern} of {self.name}") if self.clock.virtual else None
            self._ask(pattern, hold)

    def _ask(self, pattern: str, hold: Hold | None) -> None:
        rc, mid = self._client.subscribe(pattern, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:  # not connected: the subscription is made again on connect
            if hold is not None:
                hold.release()
            return
        with self._lock:
            if mid not in self._acked:
                self._asked[mid] = (pattern, hold)
                return
            granted = self._acked.pop(mid)
        self._subscribed(pattern, hold, granted=granted)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        granted = not any(getattr(r, "is_failure", False) for r in reasons or ())
        with self._lock:
            asked = self._asked.pop(mid, None)
            if asked is None:
                self._acked[mid] = granted  # faster than ``subscribe`` returned its packet id
                return
        self._subscribed(*asked, granted=granted)

    def _subscribed(self, pattern: str, hold: Hold | None, *, granted: bool = True) -> None:
        if not granted:  # the broker's ACL does not let this user read there: nothing will come
            self.stats["refused_subscriptions"] += 1
            log.warning("hub=%s the broker refused a subscription pattern=%s", self.name, pattern)
        with self._lock:
            if pattern in self._handlers and granted:
                self._heard.add(pattern)
        if hold is not None:
            hold.release()

    def unsubscribe(self, pattern: str, handler: Handler) -> None:
        with self._lock:
            handlers = self._handlers.get(pattern, [])
            if handler in handlers:
                handlers.remove(handler)
            last = pattern in self._handlers and not handlers
            if last:
                del self._handlers[pattern]
                self._heard.discard(pattern)
                self._since.pop(pattern, None)
                if pattern in self._wildcards:
                    self._wildcards.remove(pattern)
        if last:
            self._client.unsubscribe(pattern)
            self._flights.unheard(self)

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("hub=%s broker refused the connection reason=%s", self.name, reason)
            if not self._connected.is_set() and self.stats["connects"] == 0:
                self._refused = str(reason)
                self._answered.set()
            return
        with self._lock:
            patterns = list(self._handlers)
        for pattern in patterns:  # a clean session forgets subscriptions; restore them
            self._ask(pattern, None)
        if self.stats["connects"]:
            log.info("hub=%s reconnected broker=%s resubscribed=%d", self.name, self.address.url, len(patterns))
        self.stats["connects"] += 1
        self._connected.set()
        self._answered.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()
        if not self._closing and self._refused is None:
            self.stats["disconnects"] += 1
            log.warning("hub=%s lost the broker reason=%s; reconnecting with backoff", self.name, reason)
            self._fail_over()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._fail_over()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        arrival, hold = self._flights.arrived(self, msg.topic, payload)
        try:
            if arrival == "stray":  # a copy of a local message this hub is not owed (``hub.flight``)
                self.stats["strays"] += 1
                return
            self._receive(msg.topic, payload, retained=arrival == "retained")
        finally:
            if hold is not None:
                hold.release()  # after it was queued for its round

    def _receive(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        try:
            env = open_envelope(payload)
            if isinstance(env.body, CallForProposals) and env.sender in self.timekeepers:  # a market it was told to keep time with
                self.clock.follow(env.ts, env.body.speed)
            with self._lock:
                now = self.clock.ms()
                self._flood.check(env, now=now, scale=self.clock.speed)
                self._guard.check(env, now=now, exempt_from_age=env.type in RETAINED_STATE_TYPES, scale=self.clock.speed)
        except EnvelopeRejected as exc:
            self.stats[f"dropped_{exc.reason}"] += 1
            self.stats["received"] += 1  # counted once judged: received = accepted + dropped, whenever it is read
            log.debug("hub=%s dropped topic=%s reason=%s", self.name, topic, exc)
            return
        self.stats["accepted"] += 1
        self.stats["received"] += 1

        def resolve() -> Callable[[], None] | None:
            if retained and not self._flights.handing(self, topic, payload):
                self.stats["strays"] += 1  # a retained payload replaced within the step it came in
                return None
            with self._lock:
                handlers = list(self._handlers.get(topic, ()))  # most patterns are exact topics
                handlers += [h for p in self._wildcards if mqtt.topic_matches_sub(p, topic) for h in self._handlers[p]]
                if not handlers and self.session is not None:  # queued by the broker before we asked again: keep it
                    self._unclaimed.append((topic, env))
            return (lambda: self._hand_out(handlers, topic, env)) if handlers else None

        self.clock.deliver((topic, env.sender, env.id), resolve)

    def _hand_out(self, handlers: list[Handler], topic: str, env: Envelope) -> None:
        for handler in handlers:
            try:
                handler(topic, env)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("hub=%s handler failed topic=%s type=%s", self.name, topic, env.type)

    def dropped(self) -> dict[str, int]:
        """Dropped envelopes by reason (only reasons that occurred)."""
        return {k.removeprefix("dropped_"): v for k, v in self.stats.items() if k.startswith("dropped_")}
