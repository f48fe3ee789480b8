"""Identities: did:key ids, signed canonical JSON, and the keystore file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import BadSignature, InputError, InvalidDid, KeystoreError
from ledger import (
    Identity,
    Keystore,
    canonical_json,
    did_from_public_key,
    public_key_from_did,
    sign_document,
    verify_document,
)

# A did:key from the W3C did:key method's examples, decoded by independent implementations.
SPEC_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"


def test_did_key_round_trip_and_published_example() -> None:
    me = Identity.generate()
    assert me.did.startswith("did:key:z6Mk")
    assert bytes(public_key_from_did(me.did)) == bytes(me._key.verify_key)
    key = public_key_from_did(SPEC_DID)
    assert did_from_public_key(bytes(key)) == SPEC_DID


def test_same_seed_same_did() -> None:
    seed = bytes(range(32))
    assert Identity.from_seed(seed).did == Identity.from_seed(seed).did


@pytest.mark.parametrize("bad", ["", "did:web:example.com", "did:key:z0OIl", "did:key:zabc", "did:key:z" + "1" * 44, 42])
def test_bad_dids_are_refused(bad: object) -> None:
    with pytest.raises(InvalidDid):
        public_key_from_did(bad)  # type: ignore[arg-type]


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": {"z": "é", "y": [1, 2]}}) == '{"a":{"y":[1,2],"z":"é"},"b":1}'.encode()
    with pytest.raises(InputError, match="RFC 8785"):
        canonical_json({"x": float("nan")})


_KEYS = st.text(max_size=5) | st.sampled_from(["a", "\U0001f600", "\ue000", "é"])
_LEAF = (st.none() | st.booleans() | st.integers(min_value=-2**60, max_value=2**60) | st.floats() | st.text(max_size=10)
         | st.sampled_from([0.1, 1e-4, 9.999e-5, 1e16, 5.0, -0.0, 123.456, float(2**53), "\ud800", "\u2028", "\x1f"]))


@settings(max_examples=2000, deadline=None)
@given(st.recursive(_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(_KEYS, c, max_size=4), max_leaves=20))
def test_canonical_json_is_rfc8785_byte_for_byte(doc: object) -> None:
    """The fast path (the C JSON encoder, for the documents it writes as JCS does) gives rfc8785's bytes."""
    try:
        expected: bytes | None = rfc8785.dumps(doc)  # type: ignore[arg-type]
    except rfc8785.CanonicalizationError:
        expected = None
    if expected is None:
        with pytest.raises(InputError):
            canonical_json(doc)
    else:
        assert canonical_json(doc) == expected


DOC = {"v": 1, "type": "bid", "id": "0b6a", "ts": "2026-11-24T10:00:00Z", "body": {"job": "j1", "price": 5_930_000, "eta_h": 5}}


def test_signature_round_trip() -> None:
    me = Identity.generate()
    signed = sign_document(DOC, me)
    assert signed["sender"] == me.did
    assert verify_document(signed) == me.did
    # field order does not matter, only content
    assert verify_document(json.loads(json.dumps(dict(reversed(list(signed.items())))))) == me.did


def _tampered(signed: dict) -> list[tuple[str, dict]]:
    out = []
    for field in signed:
        if field in ("sig", "sender"):
            continue
        changed = dict(signed)
        changed[field] = "tampered" if signed[field] != "tampered" else "x"
        out.append((f"change {field}", changed))
        removed = {k: v for k, v in signed.items() if k != field}
        out.append((f"remove {field}", removed))
    nested = json.loads(json.dumps(signed))
    nested["body"]["price"] += 1
    out.append(("change body.price by one micro-unit", nested))
    out.append(("add a field", {**signed, "extra": 1}))
    out.append(("claim another sender", {**signed, "sender": Identity.generate().did}))
    out.append(("flip a signature bit", {**signed, "sig": ("B" if signed["sig"][0] != "B" else "C") + signed["sig"][1:]}))
    out.append(("drop the signature", {k: v for k, v in signed.items() if k != "sig"}))
    out.append(("garbage signature", {**signed, "sig": "!!"}))
    return out


def test_tampering_with_any_field_is_detected() -> None:
    signed = sign_document(DOC, Identity.generate())
    cases = _tampered(signed)
    assert len(cases) >= 14
    for what, doc in cases:
        with pytest.raises((BadSignature, InvalidDid)):
            verify_document(doc)
            pytest.fail(f"not detected: {what}")


def test_keystore_is_private_and_persistent(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "store.json"
    store = Keystore(path)
    alice = store.create("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Keystore(path).get("alice").did == alice.did
    assert store.get_or_create("alice").did == alice.did
    store.create("bob")
    assert Keystore(path).names() == ["alice", "bob"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".keystore-")]
    with pytest.raises(KeystoreError, match="already exists"):
        store.create("alice")
    with pytest.raises(KeystoreError, match="tamc keys new carol"):
        store.get("carol")


def test_keystore_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    Keystore(path).create("alice")
    os.chmod(path, 0o644)
    with pytest.raises(KeystoreError, match="chmod 600"):
        Keystore(path).get("alice")


def test_corrupt_keystore_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.json"
    Keystore(path).create("alice")
    data = json.loads(path.read_text())
    data["keys"]["alice"]["did"] = Identity.generate().did
    path.write_text(json.dumps(data))
    with pytest.raises(KeystoreError, match="does not match"):
        Keystore(path).get("alice")
    path.write_text("{not json")
    with pytest.raises(KeystoreError, match="cannot read"):
        Keystore(path).names()
