"""Who may do what on the server.

A principal is a ``did:key``. It logs in by signing a one-time challenge with its key (or an admin,
or ``tamc serve`` for its demo logins, issues it a token directly) and then sends the server-issued
bearer token. Tokens are random, kept only as their SHA-256, and expire.

Roles are per machine:

- **stakeholder**: the principal's key owns a ledger account that holds shares of the machine (read
  from the ledger each time, so a share transfer or a bound key takes effect at once): read, chat,
  propose, vote with those shares;
- **operator**: granted per machine (or for every machine, ``*``): read and chat; takes control in
  the operator console;
- **requester**: the principal owns a funded ``requester:`` wallet: post jobs, follow its own;
- **admin**: granted for ``*``: everything, and manages principals;
- **console**: granted for ``*`` to a server's own identity: machines accept the commands it relays
  for the operators it authenticated.

Grants live in ``ledger.operations`` (machines check them too).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, DateTime, MetaData, String, Table, delete, insert, select

from core.errors import BadSignature, Forbidden, InputError, InvalidDid, NotAuthenticated
from ledger import Ledger, public_key_from_did, verify_document
from ledger.operations import ALL_MACHINES, Operations, Role

__all__ = ["ALL_MACHINES", "Access", "Principal", "Role"]

CHALLENGE_TTL_S = 300.0
LOGIN_TYPE = "tamc-login"


class Principal(BaseModel):
    did: str
    name: str
    """A short name for people (shown in the cockpit, keys chat histories)."""


_meta = MetaData()
_principals = Table(
    "api_principals", _meta,
    Column("did", String(200), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
_tokens = Table(
    "api_tokens", _meta,
    Column("sha256", String(64), primary_key=True),
    Column("did", String(200), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)


class Access:
    """Principals, grants and tokens, in the ledger's database (SQLite or PostgreSQL)."""

    def __init__(self, ledger: Ledger, *, token_ttl: timedelta = timedelta(hours=12)) -> None:
        self.ledger = ledger
        self.token_ttl = token_ttl
        _meta.create_all(ledger.engine)
        self.operations = Operations(ledger.engine)
        self._challenges: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    # -- principals and grants -------------------------------------------------------------------

    def register(self, did: str, name: str) -> Principal:
        """Make ``did`` known as ``name`` (idempotent for the same pair)."""
        public_key_from_did(did)  # InvalidDid for anything that is not an Ed25519 did:key
        with self.ledger.engine.begin() as conn:
            row = conn.execute(select(_principals).where((_principals.c.did == did) | (_principals.c.name == name))).first()
            if row is None:
                conn.execute(insert(_principals).values(did=did, name=name, created_at=datetime.now(UTC)))
            elif row.did != did or row.name != name:
                raise InputError(f"the name {name!r} or the key {did} is already registered as {row.name!r} ({row.did})")
        return Principal(did=did, name=name)

    def principal(self, did: str) -> Principal | None:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(select(_principals).where(_principals.c.did == did)).first()
        return Principal(did=row.did, name=row.name) if row else None

    def grant(self, did: str, role: Role, machine_id: str = ALL_MACHINES) -> None:
        self.operations.grant(did, role, machine_id)

    def granted(self, did: str) -> list[tuple[str, Role]]:
        return self.operations.granted(did)

    # -- tokens ------------------------------------------------------------------------------------

    def issue(self, did: str) -> tuple[str, datetime]:
        """A new bearer token for a registered principal, and when it expires."""
        if self.principal(did) is None:
            raise NotAuthenticated(f"{did} is not a principal of this server; an admin registers it first")
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + self.token_ttl
        with self.ledger.engine.begin() as conn:
            conn.execute(insert(_tokens).values(sha256=_digest(token), did=did, expires_at=expires))
        return token, expires

    def authenticate(self, token: str) -> Principal:
        with self.ledger.engine.connect() as conn:
            row = conn.execute(select(_tokens).where(_tokens.c.sha256 == _digest(token))).first()
        if row is None:
            raise NotAuthenticated("unknown token: log in again (POST /v1/auth/challenge, then /v1/auth/token)")
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise NotAuthenticated(f"token expired at {expires.isoformat(timespec='seconds')}: log in again")
        principal = self.principal(row.did)
        if principal is None:
            raise NotAuthenticated("the token's principal is no longer registered")
        return principal

    def revoke(self, token: str) -> None:
        with self.ledger.engine.begin() as conn:
            conn.execute(delete(_tokens).where(_tokens.c.sha256 == _digest(token)))

    # -- login by signature ----------------------------------------------------------------------

    def challenge(self, did: str) -> str:
        """A one-time nonce for ``did`` to sign (``{"type": "tamc-login", "nonce": …, "did": …}``)."""
        if self.principal(did) is None:
            raise NotAuthenticated(f"{did} is not a principal of this server; an admin registers it first")
        nonce = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._challenges = {n: v for n, v in self._challenges.items() if v[1] > now}
            self._challenges[nonce] = (did, now + CHALLENGE_TTL_S)
        return nonce

    def login(self, signed: dict[str, Any]) -> tuple[str, datetime]:
        """Exchange a signed challenge for a token; the nonce is spent whether or not it checks."""
        nonce = signed.get("nonce")
        with self._lock:
            found = self._challenges.pop(nonce, None) if isinstance(nonce, str) else None
        if found is None or found[1] < time.monotonic():
            raise NotAuthenticated("unknown or expired challenge: ask for a new one")
        if signed.get("type") != LOGIN_TYPE:
            raise NotAuthenticated(f"a login document has type {LOGIN_TYPE!r}")
        try:
            did = verify_document(signed, signer_field="did")
        except (BadSignature, InvalidDid) as exc:
            raise NotAuthenticated(f"login refused: {exc}") from None
        if did != found[0]:
            raise NotAuthenticated("the challenge was issued to another key")
        return self.issue(did)

    # -- roles -----------------------------------------------------------------------------------

    def accounts(self, did: str) -> list[str]:
        """The ledger accounts the principal's key owns."""
        return [a.id for a in self.ledger.accounts() if a.owner == did]

    def holdings(self, did: str, machine_id: str, *, owned: list[str] | None = None) -> dict[str, int]:
        """Share units of ``machine_id`` held by accounts the principal owns (``owned``, if the
        caller has read them already)."""
        table = self.ledger.cap_table(machine_id)
        return {a: table[a] for a in (self.accounts(did) if owned is None else owned) if table.get(a)}

    def roles(self, did: str, machine_id: str, *, owned: list[str] | None = None,
              granted: list[tuple[str, Role]] | None = None) -> set[Role]:
        """The principal's roles on the machine; ``owned`` and ``granted`` save reading them again
        when the caller asks about many machines."""
        grants = self.granted(did) if granted is None else granted
        roles = {role for m, role in grants if m in (machine_id, ALL_MACHINES)}
        if self.holdings(did, machine_id, owned=owned):
            roles.add(Role.STAKEHOLDER)
        return roles

    def requester_wallet(self, did: str) -> str | None:
        return next((a for a in self.accounts(did) if a.startswith("requester:")), None)

    def is_admin(self, did: str) -> bool:
        return (ALL_MACHINES, Role.ADMIN) in self.granted(did)

    def require(self, principal: Principal, machine_id: str, *allowed: Role) -> set[Role]:
        """The principal's roles on the machine, or ``Forbidden`` naming what was needed."""
        roles = self.roles(principal.did, machine_id)
        if roles & ({*allowed, Role.ADMIN}):
            return roles
        need = " or ".join(r.value for r in allowed)
        raise Forbidden(f"{principal.name} is not a {need} of {machine_id}")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
