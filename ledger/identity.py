"""Identities: Ed25519 key pairs named by ``did:key`` ids, and signed canonical JSON.

A ``did:key`` carries the public key itself (multicodec ``0xed01`` + 32 bytes, base58btc with the
``z`` multibase prefix), so a receiver verifies a message from its ``sender`` field alone, with no
key directory. Signatures cover the canonical JSON of every field but ``sig``: keys sorted, no
spaces, UTF-8; changing any field, adding one or removing one breaks the signature.
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import rfc8785
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from core.errors import BadSignature, InputError, InvalidDid

__all__ = [
    "Identity",
    "canonical_json",
    "did_from_public_key",
    "public_key_from_did",
    "seal_to",
    "sign_document",
    "verify_document",
]

_ED25519_MULTICODEC = b"\xed\x01"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise ValueError(f"{c!r} is not a base58 character")
        n = n * 58 + _B58_INDEX[c]
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def did_from_public_key(public_key: bytes) -> str:
    if len(public_key) != 32:
        raise InvalidDid(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return "did:key:z" + _b58encode(_ED25519_MULTICODEC + public_key)


def public_key_from_did(did: str) -> VerifyKey:
    """Decode a ``did:key`` id to the Ed25519 key it names, or raise ``InvalidDid``."""
    if not isinstance(did, str):
        raise InvalidDid(f"{did!r} is not a did:key id (expected 'did:key:z6Mk…')")
    return _public_key(did)


@functools.lru_cache(maxsize=8192)
def _public_key(did: str) -> VerifyKey:
    # cached: a receiver sees the same few senders again and again, and base58 decoding is slow
    if not did.startswith("did:key:z"):
        raise InvalidDid(f"{did!r} is not a did:key id (expected 'did:key:z6Mk…')")
    try:
        raw = _b58decode(did.removeprefix("did:key:z"))
    except ValueError as exc:
        raise InvalidDid(f"{did!r}: {exc}") from None
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise InvalidDid(f"{did!r} does not name an Ed25519 public key")
    try:
        return VerifyKey(raw[2:])
    except (CryptoError, ValueError) as exc:
        raise InvalidDid(f"{did!r}: {exc}") from None


def seal_to(did: str, message: bytes) -> bytes:
    """Encrypt ``message`` so that only the holder of ``did``'s key can read it: a libsodium sealed
    box (an ephemeral X25519 key, XSalsa20-Poly1305) to the Curve25519 form of the did's Ed25519
    key, so a did:key needs no second key published beside it."""
    return SealedBox(_box_key(did)).encrypt(message)


@functools.lru_cache(maxsize=1024)
def _box_key(did: str) -> PublicKey:
    return public_key_from_did(did).to_curve25519_public_key()


def canonical_json(obj: Any) -> bytes:
    """The bytes that get signed: the JSON Canonicalization Scheme (RFC 8785, JCS), so a verifier
    in any language derives the same bytes: keys sorted by UTF-16 code units, no spaces, UTF-8,
    strings escaped as ECMAScript does, numbers in ECMAScript's shortest form (``5`` for 5.0,
    ``0.000021`` for 2.1e-05), integers within ±(2**53 - 1) (I-JSON). Raises ``InputError`` for
    what JCS cannot encode (NaN, infinity, a larger integer).

    Most documents (ASCII keys, integers in range, floats that Python already writes as ECMAScript
    does) are written by the standard library's C encoder, which gives the same bytes as JCS for
    them; anything else goes through ``rfc8785``. Every envelope is canonicalised twice (sealed,
    then checked), so this is on every message's path."""
    if _plain(obj):
        try:
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: rfc8785 refuses it with its own words
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise InputError(f"cannot be signed as canonical JSON (RFC 8785): {exc}") from None


_INT_MAX = 2**53 - 1


def _plain(obj: Any) -> bool:
    """JCS and ``json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"))`` write
    ``obj`` alike: only dicts with ASCII string keys (sorted by code point = by UTF-16 unit),
    lists, tuples, strings (both escape exactly ``"``, ``\\`` and the controls below U+0020, with
    ``\\uXXXX`` in lower case), booleans, None, integers within ±(2**53 - 1), and floats written
    in plain decimals by both (not integral, 1e-4 <= |f| < 1e16, where Python's ``repr`` and
    ECMAScript's shortest form are the same digits)."""
    t = type(obj)
    if t is str or obj is None or t is bool:
        return True
    if t is int:
        return bool(-_INT_MAX <= obj <= _INT_MAX)
    if t is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in obj.items())
    if t is list or t is tuple:
        return all(_plain(v) for v in obj)
    if t is float:
        a = abs(obj)
        return 1e-4 <= a < 1e16 and not a.is_integer()
    return False  # subclasses (enums) and anything else: rfc8785 decides


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Identity:
    """An Ed25519 key pair. Its ``did`` is public; the seed never leaves the keystore."""

    __slots__ = ("_box", "_key", "did")

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key
        self.did = did_from_public_key(bytes(signing_key.verify_key))
        self._box: SealedBox[PrivateKey] | None = None
        """The sealed box of the key's Curve25519 form, made at the first ``unseal``: deriving it
        (a conversion and a scalar multiplication) cost a requester more than opening each bid."""

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise InvalidDid(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def unseal(self, sealed: bytes) -> bytes:
        """Open what ``seal_to(self.did, …)`` sealed (an X25519 sealed box on the key's Curve25519
        form), or raise ``BadSignature`` if it was not sealed to this identity or was altered."""
        try:
            box = self._box
            if box is None:
                box = self._box = SealedBox(self._key.to_curve25519_private_key())
            return box.decrypt(sealed)
        except (CryptoError, ValueError, TypeError) as exc:
            raise BadSignature(f"not sealed to {self.did}, or altered: {exc}") from None

    def __repr__(self) -> str:
        return f"Identity({self.did})"


def sign_document(doc: dict[str, Any], identity: Identity, *, signer_field: str = "sender") -> dict[str, Any]:
    """Return a copy of ``doc`` with ``signer_field`` set to the signer's did and ``sig`` added."""
    body = {k: v for k, v in doc.items() if k != "sig"}
    body[signer_field] = identity.did
    return {**body, "sig": _b64(identity.sign(canonical_json(body)))}


def verify_document(doc: dict[str, Any], *, signer_field: str = "sender") -> str:
    """Check ``doc['sig']`` against the did in ``signer_field``; return that did or raise."""
    sig = doc.get("sig")
    if not isinstance(sig, str) or not sig:
        raise BadSignature("document is unsigned (no 'sig' field)")
    did = doc.get(signer_field)
    if not isinstance(did, str):
        raise BadSignature(f"document has no signer in {signer_field!r}")
    key = public_key_from_did(did)
    body = {k: v for k, v in doc.items() if k != "sig"}
    try:
        raw = _unb64(sig)
        key.verify(canonical_json(body), raw)
    except InputError as exc:
        raise BadSignature(f"the document signed by {did} has no canonical form: {exc}") from None
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise BadSignature(f"signature does not match the document signed by {did}: {exc}") from None
    return did
