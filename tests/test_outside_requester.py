"""A requester written from docs/protocol.md alone funds, follows and pays a job on a running city.

Everything it says on the wire it builds itself, as a third party would from the doc: canonical JSON
(RFC 8785: its own number formatting and key order), ``did:key`` encoding, Ed25519 signatures
(PyNaCl), opening sealed bids (libsodium's sealed box), MQTT 5 over paho, and the ledger over HTTP
(httpx). It imports nothing of TAMC's hub, ledger or agents: if the doc stops being enough, or TAMC
stops following it, this fails. The city is ``tamc serve``'s; the setup an operator does for an
outside party (a principal with a funded wallet, a broker login) is done as the operator would."""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey
from paho.mqtt.enums import CallbackAPIVersion

from server.runner import Served

EXAMPLE_JOB = Path(__file__).parent.parent / "examples" / "jobs" / "print-bracket.json"
UNIT = 1_000_000

# -- RFC 8785, written from the doc ------------------------------------------------------------------


def es_number(x: float) -> str:
    """A number as ECMAScript's Number::toString writes it (RFC 8785, section 3.2.2.3)."""
    if not math.isfinite(x):
        raise ValueError("JCS has no NaN or infinity")
    if x == 0:
        return "0"
    if x < 0:
        return "-" + es_number(-x)
    mantissa, _, exp = repr(float(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits, n = whole + frac, len(whole) + int(exp or 0)  # x = 0.digits × 10^n
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    s = stripped.rstrip("0") or "0"
    k = len(s)
    if k <= n <= 21:
        return s + "0" * (n - k)
    if 0 < n <= 21:
        return s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + s
    e = n - 1
    return (s if k == 1 else s[0] + "." + s[1:]) + "e" + ("+" if e > 0 else "-") + str(abs(e))


def jcs(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return es_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON.stringify's escapes: \" \\ \b \f \n \r \t, \u00xx
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(f"{jcs(k)}:{jcs(v[k])}" for k in keys) + "}"
    raise TypeError(type(v))


def test_our_canonical_json_is_rfc_8785s_own_examples() -> None:
    """The RFC's appendix B numbers, and its key-ordering example (section 3.2.3)."""
    for value, text in [(0.0, "0"), (-0.0, "0"), (5e-324, "5e-324"), (1.7976931348623157e308, "1.7976931348623157e+308"),
                        (9007199254740992.0, "9007199254740992"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
                        (0.000001, "0.000001"), (1e-7, "1e-7"), (333333333.3333333, "333333333.3333333"),
                        (2.1e-05, "0.000021"), (5.0, "5"), (-1.5, "-1.5"), (295147905179352830000.0, "295147905179352830000")]:
        assert es_number(value) == text, (value, es_number(value), text)
    assert jcs({"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7}) == \
        '{"\\r":2,"1":4,"\u0080":6,"\u00f6":7,"\u20ac":1,"\U0001f600":5,"\ufb33":3}'


# -- keys, did:key, envelopes -------------------------------------------------------------------------

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58(data: bytes) -> str:
    n, out = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def unb58(text: str) -> bytes:
    n = 0
    for c in text:
        n = n * 58 + B58.index(c)
    return b"\0" * (len(text) - len(text.lstrip("1"))) + n.to_bytes((n.bit_length() + 7) // 8, "big")


def did_of(key: SigningKey) -> str:
    return "did:key:z" + b58(b"\xed\x01" + bytes(key.verify_key))


def key_of(did: str) -> VerifyKey:
    raw = unb58(did.removeprefix("did:key:z"))
    assert raw[:2] == b"\xed\x01" and len(raw) == 34
    return VerifyKey(raw[2:])


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed(doc: dict[str, Any], key: SigningKey, signer_field: str = "sender") -> dict[str, Any]:
    body = {**doc, signer_field: did_of(key)}
    return {**body, "sig": b64u(key.sign(jcs(body).encode()).signature)}


def verified(payload: bytes) -> dict[str, Any]:
    """An envelope whose signature checks against its sender, by our canonical JSON; else an error."""
    doc = json.loads(payload)
    body = {k: v for k, v in doc.items() if k != "sig"}
    key_of(doc["sender"]).verify(jcs(body).encode(), unb64u(doc["sig"]))
    return doc


class OutsideRequester:
    """The requester: its key, its HTTP client (the ledger) and its MQTT connection (the market)."""

    def __init__(self, api: str, broker_url: str) -> None:
        self.key = SigningKey(os.urandom(32))
        self.did = did_of(self.key)
        self.http = httpx.Client(base_url=api, timeout=30)
        self.inbox: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.rejected: list[str] = []
        url = urlsplit(broker_url)
        self.mqtt = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"outsider-{os.urandom(4).hex()}", protocol=mqtt.MQTTv5)
        self.mqtt.username_pw_set(url.username, url.password)
        self.mqtt.on_message = self._on_message
        self.mqtt.connect(url.hostname or "127.0.0.1", url.port or 1883)
        self.mqtt.loop_start()
        self.clock_at = (0, 0.0, 1.0)
        self.sent = 0

    def login(self) -> None:
        challenge = self.http.post("/v1/auth/challenge", json={"did": self.did}).raise_for_status().json()
        token = self.http.post("/v1/auth/token", json=signed(challenge["sign"], self.key, "did")).raise_for_status().json()
        self.http.headers["Authorization"] = f"Bearer {token['token']}"
        clock = self.http.get("/v1/market/clock").raise_for_status().json()
        assert clock["protocol"] == 2 and clock["topic_prefix"] == "tamc/v3"
        self.clock_at = (clock["now_ms"], time.monotonic(), clock["speed"])

    def now(self) -> int:
        """Market epoch ms: the server's reading, advanced at the market's speed."""
        at, read, speed = self.clock_at
        return at + int((time.monotonic() - read) * speed * 1000)

    def real_ms(self, seconds: float) -> int:
        """``seconds`` of real time, in market ms."""
        return int(seconds * self.clock_at[2] * 1000)

    def publish(self, topic: str, kind: str, body: dict[str, Any]) -> None:
        self.sent += 1
        envelope = signed({"v": 2, "type": kind, "id": f"{self.sent:012x}{os.urandom(8).hex()}", "ts": self.now(), "body": body},
                          self.key)
        self.mqtt.publish(f"tamc/v3/{topic}", json.dumps(envelope), qos=1).wait_for_publish(10)

    def subscribe(self, topic: str) -> None:
        self.mqtt.subscribe(f"tamc/v3/{topic}", qos=1)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.inbox.put((msg.topic, verified(msg.payload)))
        except Exception as exc:  # a receiver drops what does not verify, and counts it
            self.rejected.append(f"{msg.topic}: {exc!r}")

    def take(self, seconds: float, want: Any) -> dict[str, Any]:
        """The first envelope ``want(topic, doc)`` accepts within ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, doc = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if want(topic, doc):
                return doc
        raise AssertionError(f"nothing wanted arrived in {seconds} s (rejected: {self.rejected[-3:]})")

    def close(self) -> None:
        self.mqtt.loop_stop()
        self.mqtt.disconnect()
        self.http.close()


@pytest.fixture
def outsider(served: Served) -> Any:
    """The operator's setup for an outside requester: a principal with a funded wallet (the admin
    API) and a broker login (``tamc broker add NAME --role requester``)."""
    name = f"outsider-{os.urandom(3).hex()}"
    requester = OutsideRequester(served.url, served.city.admit(name, "requester"))
    admin = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.login('admin').token}"}, timeout=30)
    r = admin.post("/v1/admin/principals", json={"name": name, "did": requester.did, "requester_budget": 500 * UNIT})
    assert r.status_code == 201, r.text
    admin.close()
    requester.login()
    yield requester
    requester.close()


def test_a_requester_written_from_the_doc_funds_follows_and_pays_a_job(served: Served, outsider: OutsideRequester) -> None:
    me = outsider
    registered = {m["machine_id"]: m["did"] for m in me.http.get("/v1/ledger/machines").raise_for_status().json()}
    (wallet,) = [a for a in me.http.get("/v1/ledger/accounts").json() if a["id"].startswith("requester:")]
    assert wallet["balance"] == 500 * UNIT

    # who is online, from presence signed by the did each machine registered
    me.subscribe("machines/+/presence")
    job = json.loads(EXAMPLE_JOB.read_text())
    presence = me.take(20, lambda t, d: d["type"] == "presence" and d["body"]["state"] == "online"
                       and d["body"]["kind"] == job["kind"] and registered.get(d["body"]["machine_id"]) == d["sender"])
    region = presence["body"]["territory"][0]

    job_id = f"{wallet['id']}.bracket-{os.urandom(4).hex()}"  # in our own namespace
    at = job_id.replace(".", "~")  # an id as a topic level: its dots written ~
    me.subscribe(f"jobs/{at}/bids")
    me.subscribe(f"jobs/{at}/events")
    reserve = 100 * UNIT
    spec = {k: v for k, v in job.items() if k not in ("id", "max_price")} | {"id": job_id, "region": region}
    now = me.now()
    me.publish(f"market/{region}/{job['kind']}/cfp", "cfp", {
        "job": spec, "reserve": reserve, "bid_deadline": now + me.real_ms(2.0),
        "deadline_at": now + int(job["deadline_h"] * 3600 * 1000), "speed": me.clock_at[2]})

    # sealed bids: open them with our key's Curve25519 form, count them only from registered dids
    box = SealedBox(me.key.to_curve25519_private_key())
    bids = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        try:
            _, doc = me.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            break
        if doc["type"] != "bid":
            continue
        terms = json.loads(box.decrypt(unb64u(doc["body"]["sealed"])))
        assert "cost" not in terms and (terms["job_id"], terms["machine_id"]) == (job_id, doc["body"]["machine_id"])
        if registered.get(terms["machine_id"]) == doc["sender"] and terms["price"] <= reserve:
            bids.append(terms)
    assert bids, f"no bid in 2.5 s (rejected: {me.rejected[-3:]})"
    best = min(bids, key=lambda b: (b["price"], b["eta_h"], b["machine_id"]))
    machine, price = best["machine_id"], best["price"]

    def from_machine(kind: str) -> Any:
        return lambda t, d: (d["type"] == "event" and d["sender"] == registered[machine]
                             and d["body"]["machine_id"] == machine and d["body"]["kind"] == kind)

    now = me.now()
    me.publish(f"jobs/{at}/award", "award", {
        "job_id": job_id, "machine_id": machine, "price": price, "accept_by": now + me.real_ms(5.0), "attempt": 1,
        "takeover": False, "finish_at": now + int(best["eta_h"] * 3600 * 1000)})
    me.take(10, from_machine("accepted"))

    # fund through the ledger's HTTP interface, then tell the machine
    escrow = me.http.post("/v1/ledger/escrows", json={"job_id": job_id, "payer": wallet["id"], "amount": price})
    assert escrow.status_code == 201, escrow.text
    assert escrow.json()["state"] == "held"
    again = me.http.post("/v1/ledger/escrows", json={"job_id": job_id, "payer": wallet["id"], "amount": price})
    assert again.json()["opened_by"] == escrow.json()["opened_by"]  # a retried open repeats, never doubles
    me.publish(f"jobs/{at}/events", "event", {"job_id": job_id, "machine_id": machine, "kind": "funded",
                                                 "posting": escrow.json()["opened_by"]})
    me.take(150, from_machine("started"))
    _wait(lambda: any(e.kind == "started" for _, e in served.app.state.ctx.feed.job_events.get(job_id, ())))  # the server heard it
    refused = me.http.post(f"/v1/ledger/escrows/{job_id}/refund")
    assert refused.status_code == 409 and refused.json()["error"] == "RefundRefused"  # not while it works
    me.take(240, from_machine("done"))

    paid = me.http.post(f"/v1/ledger/escrows/{job_id}/release", json={"machine_id": machine})
    assert paid.status_code == 200, paid.text
    assert paid.json() | {"closed_by": None} == {**escrow.json(), "state": "released", "paid_to": f"machine:{machine}",
                                                 "closed_by": None}
    posting = paid.json()["closed_by"]
    me.publish(f"jobs/{at}/events", "event", {"job_id": job_id, "machine_id": machine, "kind": "paid", "posting": posting})
    me.publish(f"jobs/{at}/award", "closed", {"job_id": job_id, "outcome": "paid", "machine_id": machine,
                                                  "price": price, "posting": posting})

    after = me.http.get(f"/v1/ledger/accounts/{wallet['id']}").json()
    assert after["balance"] == 500 * UNIT - price
    # the machine believed the payment (it is in the ledger) and paid its costs and its holders from it
    ledger = served.city.ledger
    _wait(lambda: ledger.posting(f"split:{job_id}:{machine}"))
    assert ledger.posting(f"costs:{job_id}:{machine}") is not None and ledger.posting(f"split:{job_id}:{machine}") is not None
    assert not me.rejected, me.rejected  # every envelope the market sent verified by our canonical JSON


def test_the_ledger_interface_moves_only_the_callers_own_money(served: Served, outsider: OutsideRequester) -> None:
    http = outsider.http
    (wallet,) = [a["id"] for a in http.get("/v1/ledger/accounts").json()]
    rita = served.access.requester_wallet(served.login("rita").did)
    machine = http.get("/v1/ledger/machines").json()[0]["machine_id"]

    def problem(r: httpx.Response, status: int, error: str) -> None:
        assert (r.status_code, r.json()["error"]) == (status, error), r.text

    # another party's account: neither read nor spent, nor its namespace used
    problem(http.get(f"/v1/ledger/accounts/{rita}"), 403, "Forbidden")
    problem(http.get(f"/v1/ledger/accounts/machine:{machine}"), 403, "Forbidden")
    problem(http.post("/v1/ledger/escrows", json={"job_id": f"{wallet}.j1", "payer": rita, "amount": 1}), 403, "Forbidden")
    problem(http.post("/v1/ledger/escrows", json={"job_id": f"{rita}.j1", "payer": wallet, "amount": 1}), 403, "Forbidden")
    assert http.post("/v1/ledger/escrows", json={"job_id": "no-owner", "payer": wallet, "amount": 1}).status_code == 422
    problem(http.post("/v1/ledger/escrows", json={"job_id": f"{wallet}.j1", "payer": wallet, "amount": 10**15}), 409,
            "InsufficientFunds")
    # an escrow of someone else's job (one the city's own requesters opened) is not ours to move or read
    _wait(lambda: _escrow_ids(served))
    theirs = _escrow_ids(served)[0]
    problem(http.get(f"/v1/ledger/escrows/{theirs}"), 403, "Forbidden")
    problem(http.post(f"/v1/ledger/escrows/{theirs}/refund"), 403, "Forbidden")
    problem(http.post(f"/v1/ledger/escrows/{theirs}/release", json={"machine_id": machine}), 403, "Forbidden")

    # our own: held, refunded once (a second refund is refused: closed), never paid to a non-machine
    opened = http.post("/v1/ledger/escrows", json={"job_id": f"{wallet}.j2", "payer": wallet, "amount": 3 * UNIT})
    assert opened.status_code == 201 and opened.json()["amount"] == 3 * UNIT
    problem(http.post("/v1/ledger/escrows", json={"job_id": f"{wallet}.j2", "payer": wallet, "amount": 4 * UNIT}), 409,
            "IdempotencyConflict")
    problem(http.post(f"/v1/ledger/escrows/{wallet}.j2/release", json={"machine_id": "rita"}), 404, "UnknownAccount")
    refunded = http.post(f"/v1/ledger/escrows/{wallet}.j2/refund")
    assert refunded.json()["state"] == "refunded" and refunded.json()["paid_to"] == wallet
    problem(http.post(f"/v1/ledger/escrows/{wallet}.j2/release", json={"machine_id": machine}), 409, "EscrowClosed")
    assert http.get(f"/v1/ledger/accounts/{wallet}").json()["balance"] == 500 * UNIT
    # nobody without a token; and the supply never moved (no minting through this interface)
    anon = httpx.Client(base_url=served.url)
    problem(anon.get("/v1/ledger/machines"), 401, "NotAuthenticated")
    problem(anon.post("/v1/ledger/escrows", json={"job_id": f"{wallet}.j3", "payer": wallet, "amount": 1}), 401,
            "NotAuthenticated")
    anon.close()
    assert served.city.ledger.audit() == []


def _escrow_ids(served: Served) -> list[str]:
    """Escrows the city's own requesters opened."""
    return [a.id.removeprefix("escrow:") for a in served.city.ledger.accounts()
            if a.id.startswith("escrow:") and "outsider-" not in a.id]


def _wait(ready: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.05)


def test_an_escrow_past_its_expiry_goes_back_to_its_payer_whoever_asks(served: Served, outsider: OutsideRequester) -> None:
    """A requester that never comes back strands no money: anyone logged in (here the demo's
    requester rita) may have its expired escrow refunded, to the payer alone, and nobody before."""
    http = outsider.http
    (wallet,) = [a["id"] for a in http.get("/v1/ledger/accounts").json()]
    expires = outsider.now() + outsider.real_ms(1.0)  # a second of real time
    opened = http.post("/v1/ledger/escrows", json={"job_id": f"{wallet}.gone", "payer": wallet, "amount": 7 * UNIT,
                                                   "expires_ms": expires})
    assert opened.status_code == 201 and opened.json()["expires_at"] is not None
    stranger = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.login('rita').token}"})
    early = stranger.post(f"/v1/ledger/escrows/{wallet}.gone/expire")
    assert (early.status_code, early.json()["error"]) == (409, "EscrowNotExpired")
    assert stranger.post(f"/v1/ledger/escrows/{wallet}.gone/refund").status_code == 403  # not rita's to refund early
    _wait(lambda: outsider.now() > expires + outsider.real_ms(0.2))
    late = stranger.post(f"/v1/ledger/escrows/{wallet}.gone/expire")
    assert late.status_code == 200, late.text
    assert late.json()["state"] == "refunded" and late.json()["paid_to"] == wallet
    assert http.get(f"/v1/ledger/accounts/{wallet}").json()["balance"] == 500 * UNIT
    stranger.close()
