"""The envelope every hub message travels in: typed, signed by its sender, checked on receipt.

Wire form (JSON object): ``v`` (protocol version, 1), ``type`` (one of ``BODY_TYPES``), ``id``
(unique string, the de-duplication key), ``sender`` (``did:key`` of the signer), ``ts`` (milliseconds
since the Unix epoch, sender's wall clock), ``body`` (the typed payload as JSON) and ``sig``
(Ed25519, base64url, over the canonical JSON of every other field). See docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import BadSignature, EnvelopeRejected, InputError, InvalidDid
from hub.messages import BODY_TYPES, Body
from ledger.identity import Identity, sign_document, verify_document

__all__ = ["MAX_ENVELOPE_BYTES", "PROTOCOL_VERSION", "REJECT_REASONS", "Envelope", "FloodGuard", "ReplayGuard", "new_envelope_id",
           "now_ms", "open_envelope", "seal"]

PROTOCOL_VERSION = 2
MAX_ENVELOPE_BYTES = 64 * 1024
"""The protocol's size limit on one envelope, in bytes (the largest a city sends is under 1 KB):
a larger one is dropped unread (``oversize``), before it is parsed or held, and the broker cuts off a
client whose packet is larger than this and its topic (``hub.broker``). A sender refuses to seal one."""
REJECT_REASONS = ("oversize", "malformed", "unsigned", "bad_signature", "unknown_type", "stale", "duplicate", "flood",
                  "unsealable")
"""Why a receiver drops an envelope; each is counted separately (``Hub.stats``)."""


_ID_COUNTER = itertools.count()


_RANDOM = threading.local()
_RANDOM_BATCH = 512
"""Ids whose random bits are read from the OS at once: one getrandom call (which lets go of the GIL, and
a busy process's thread waits to get it back) for 512 envelopes instead of one each."""


def _fresh_pool() -> None:
    global _RANDOM
    _RANDOM = threading.local()  # a forked child never reuses its parent's bits


os.register_at_fork(after_in_child=_fresh_pool)


def new_envelope_id() -> str:
    """A counter, then 64 random bits: ids of one process sort in the order they were made (a
    virtual clock hands out one sender's messages of one instant in that order), and nobody can
    guess the next one. Receivers key repeats by sender and id, so another sender's id is no threat."""
    pool: list[str] | None = getattr(_RANDOM, "pool", None)
    if not pool:
        raw = os.urandom(8 * _RANDOM_BATCH).hex()
        pool = _RANDOM.pool = [raw[i:i + 16] for i in range(0, len(raw), 16)]
    return f"{next(_ID_COUNTER):012x}{pool.pop()}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Envelope(BaseModel):
    """A checked envelope: the signature matched ``sender`` and ``body`` parsed as its ``type``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    v: Literal[2]
    type: str
    id: str
    sender: str
    ts: int
    body: Body


def seal(body: Body, identity: Identity, *, ts: int | None = None, envelope_id: str | None = None) -> bytes:
    """Wrap ``body`` in an envelope signed by ``identity``; returns the bytes to publish."""
    doc = {
        "v": PROTOCOL_VERSION,
        "type": body.TYPE,
        "id": envelope_id or new_envelope_id(),
        "ts": now_ms() if ts is None else ts,
        "body": body.model_dump(mode="json"),
    }
    payload = json.dumps(sign_document(doc, identity), separators=(",", ":")).encode("utf-8")
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise InputError(f"a {body.TYPE} envelope of {len(payload)} bytes is over the protocol's limit of "
                         f"{MAX_ENVELOPE_BYTES}: shorten its text fields")
    return payload


_OPENED: OrderedDict[bytes, Envelope] = OrderedDict()
_OPENED_MAX = 4096
_OPENED_LOCK = threading.Lock()


def open_envelope(payload: bytes) -> Envelope:
    """Parse and verify one received payload, or raise ``EnvelopeRejected`` with the reason.

    The same bytes open to the same envelope: every hub of a process that receives a message (a
    call for proposals reaches each bidder's connection) shares one verification, found by the
    payload's BLAKE2b digest. Whether it is fresh or a repeat is each receiver's own check."""
    if len(payload) > MAX_ENVELOPE_BYTES:
        raise EnvelopeRejected("oversize", f"{len(payload)} bytes, over the protocol's limit of {MAX_ENVELOPE_BYTES}")
    key = hashlib.blake2b(payload, digest_size=16).digest()
    with _OPENED_LOCK:
        hit = _OPENED.get(key)
    if hit is not None:
        return hit
    env = _open(payload)
    with _OPENED_LOCK:
        _OPENED[key] = env
        while len(_OPENED) > _OPENED_MAX:
            _OPENED.popitem(last=False)
    return env


def _open(payload: bytes) -> Envelope:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeRejected("malformed", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EnvelopeRejected("malformed", "an envelope is a JSON object")
    if not doc.get("sig"):
        raise EnvelopeRejected("unsigned", f"envelope {doc.get('id')!r} carries no signature")
    try:
        verify_document(doc)
    except (BadSignature, InvalidDid) as exc:
        raise EnvelopeRejected("bad_signature", str(exc)) from None
    body_type = BODY_TYPES.get(doc.get("type"))  # type: ignore[arg-type]
    if body_type is None:
        raise EnvelopeRejected("unknown_type", f"type {doc.get('type')!r} is not one of {sorted(BODY_TYPES)}")
    envelope_id = doc.get("id")
    if doc.get("v") != PROTOCOL_VERSION or not isinstance(doc.get("ts"), int) or not isinstance(envelope_id, str) \
            or not 1 <= len(envelope_id) <= 64:
        raise EnvelopeRejected("malformed", f"needs v={PROTOCOL_VERSION}, an integer ts and an id of 1 to 64 characters")
    try:
        body = body_type.model_validate(doc.get("body"))
    except ValidationError as exc:
        raise EnvelopeRejected("malformed", f"{doc['type']} body: {exc.errors(include_url=False)[0]['msg']}") from None
    return Envelope(v=PROTOCOL_VERSION, type=doc["type"], id=doc["id"], sender=doc["sender"], ts=doc["ts"], body=body)


class ReplayGuard:
    """Refuses envelopes older than ``max_age_ms`` (or too far in the future) and ids seen before.

    Ids are remembered only for the age window: anything older is refused as stale anyway, so the
    memory stays bounded by the message rate times the window.
    """

    def __init__(self, max_age_ms: int = 30_000, max_skew_ms: int = 5_000) -> None:
        self.max_age_ms = max_age_ms
        self.max_skew_ms = max_skew_ms
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check(self, env: Envelope, *, now: int | None = None, exempt_from_age: bool = False, scale: float = 1.0) -> None:
        """``now`` in epoch ms of the receiver's clock; ``scale``: market ms per real ms of that
        clock (the windows are real time: on a market 3600 times faster they span 3600 times more)."""
        now = now_ms() if now is None else now
        max_age, max_skew = self.max_age_ms * scale, self.max_skew_ms * scale
        self._forget(now, max_age)
        if not exempt_from_age:
            if env.ts < now - max_age:
                raise EnvelopeRejected("stale", f"envelope {env.id} is {(now - env.ts) / 1000:.1f} s old")
            if env.ts > now + max_skew:
                raise EnvelopeRejected("stale", f"envelope {env.id} is dated {(env.ts - now) / 1000:.1f} s ahead")
        key = (env.sender, env.id)  # one sender's ids cannot shadow another's
        if key in self._seen:
            raise EnvelopeRejected("duplicate", f"envelope {env.id} of {env.sender} was already received")
        self._seen[key] = max(env.ts, now) if exempt_from_age else env.ts

    def _forget(self, now: int, max_age: float) -> None:
        horizon = now - max_age
        seen = self._seen
        while seen:
            first = next(iter(seen))
            if seen[first] >= horizon:
                break
            seen.popitem(last=False)



class FloodGuard:
    """At most ``burst`` envelopes from one sender at once, refilled at ``per_s`` a second (of real
    time: market time over the clock's speed, so a simulated day counts as the live one would): a
    sender past it is dropped and counted (``flood``), every other sender is untouched. It judges
    senders by their verified did, so nobody can spend another's allowance; it remembers at most
    ``senders`` of them (the least recent go first: a full bucket is what a new one starts with).

    2,000 a second: a requester closing a hundred jobs a second sends five hundred; a flood sends
    tens of thousands, and each costs a signature check to drop."""

    def __init__(self, burst: int = 2_000, per_s: float = 2_000.0, senders: int = 10_000) -> None:
        self.burst, self.per_s, self.senders = burst, per_s, senders
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, env: Envelope, *, now: int, scale: float = 1.0) -> None:
        """``now`` in epoch ms of the receiver's clock; ``scale``: market ms per real ms of that clock."""
        at = now / 1000 / scale
        tokens, last = self._buckets.pop(env.sender, (float(self.burst), at))
        tokens = min(float(self.burst), tokens + max(at - last, 0.0) * self.per_s)
        if tokens < 1.0:
            self._buckets[env.sender] = (tokens, max(at, last))
            raise EnvelopeRejected("flood", f"{env.sender} sent more than {self.burst} envelopes at once "
                                            f"(or {self.per_s:g} a second): dropped")
        self._buckets[env.sender] = (tokens - 1.0, max(at, last))
        while len(self._buckets) > self.senders:
            self._buckets.popitem(last=False)
