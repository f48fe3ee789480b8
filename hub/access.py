"""Who may connect to the broker and what each identity may publish and read: the broker's half of
the protocol's trust (docs/protocol.md, "Who enforces what").

Every participant connects with a user name and a password; anonymous connections are refused.
A user has one ``Role``, and ``GRANTS`` says, per role, which topic families it may publish on and
which it may read. A machine publishes only under its own ``machines/{id}/`` topics; no one but a
requester (or the steward that hires technicians for machines) reads bids; nobody but a console or
an operator commands a machine. What a static list cannot say (a machine's events only for a job it
holds, an award only from the job's requester) the receivers check by signature.

``BrokerUsers`` keeps the users (name, role, password) in a 0600 JSON file and writes mosquitto's
``password_file`` (PBKDF2-SHA512, mosquitto 2.0's ``$7$`` format) and ``acl_file`` (one ``user``
block per identity: deny by default, grant by role) from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple, get_args
from urllib.parse import quote

from core.errors import InputError, KeystoreError
from core.files import write_private
from hub.topics import PREFIX, level

__all__ = ["GRANTS", "ROLES", "BrokerUser", "BrokerUsers", "Grant", "Role", "acl_lines", "check_username", "grant", "password_hash"]

Role = Literal["machine", "requester", "steward", "technician", "console", "operator", "auditor"]
ROLES: tuple[Role, ...] = get_args(Role)

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A user name is a topic level (a machine's own topics carry it) and a password-file key (no ``:``)."""


class Grant(NamedTuple):
    publish: tuple[str, ...]
    read: tuple[str, ...]


def _family(name: str, me: str = "+") -> str:
    machine = f"{PREFIX}/machines/{me}"
    return {
        "cfp": f"{PREFIX}/market/+/+/cfp",
        "service-cfp": f"{PREFIX}/market/+/service/cfp",
        "bids": f"{PREFIX}/jobs/+/bids",
        "offers": f"{PREFIX}/jobs/+/offers",
        "award": f"{PREFIX}/jobs/+/award",
        "events": f"{PREFIX}/jobs/+/events",
        "presence": f"{machine}/presence",
        "telemetry": f"{machine}/telemetry",
        "handoff": f"{machine}/handoff",
        "control": f"{machine}/control",
        "control-result": f"{machine}/control/result",
        "governance": f"{machine}/governance",
    }[name]


GRANTS: dict[Role, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # role: (families it publishes on, families it reads); "own:" = only under its own machines/{name}/
    "machine": (("own:presence", "own:telemetry", "own:handoff", "own:control-result", "bids", "offers", "events"),
                ("cfp", "award", "events", "own:control", "own:governance")),
    "requester": (("cfp", "award", "events"),
                  ("bids", "offers", "events", "presence")),
    "steward": (("service-cfp", "award", "events", "governance"),
                ("cfp", "bids", "offers", "award", "events", "presence")),
    "technician": (("bids", "events"),
                   ("service-cfp", "award", "events")),
    "console": (("control", "governance"),
                ("telemetry", "presence", "governance", "events", "handoff", "control-result")),
    "operator": (("control",),
                 ("handoff", "control-result", "telemetry", "presence")),
    "auditor": ((),
                ("cfp", "award", "events", "presence", "telemetry", "handoff", "governance", "control", "control-result")),
}
"""What each role may publish and read, by topic family. Requesters read bids, which are sealed to
the requester that posted the job (docs/protocol.md), so another requester reads only ciphertext."""


def grant(role: Role, name: str) -> Grant:
    """The concrete topic patterns ``name`` in ``role`` may publish on and read."""
    publish, read = GRANTS[role]

    def expand(families: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_family(f.removeprefix("own:"), level(name) if f.startswith("own:") else "+") for f in families)

    return Grant(expand(publish), expand(read))


def acl_lines(name: str, role: Role) -> list[str]:
    """mosquitto ``acl_file`` lines for one user: a ``user`` block, each pattern once."""
    allowed = grant(role, name)
    lines = [f"user {name}"]
    for pattern in dict.fromkeys(allowed.publish + allowed.read):
        can = ("read" if pattern in allowed.read else "") + ("write" if pattern in allowed.publish else "")
        lines.append(f"topic {'readwrite' if can == 'readwrite' else can} {pattern}")
    return lines


def check_username(name: str) -> str:
    if not _USERNAME.match(name):
        raise InputError(f"{name!r} cannot be a broker user name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = 101) -> str:
    """A mosquitto 2.0 password-file hash (``$7$``: PBKDF2-HMAC-SHA512, 12-byte salt), as
    ``mosquitto_passwd`` writes it, so a machine without that tool can still write the file."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class BrokerUser(NamedTuple):
    name: str
    role: Role
    password: str

    def url(self, host: str, port: int, query: str = "") -> str:
        """Where this user connects: ``mqtt://name:password@host:port``."""
        return f"mqtt://{quote(self.name, safe='')}:{quote(self.password, safe='')}@{host}:{port}{query}"


class BrokerUsers:
    """The broker's users, kept in a JSON file readable by its owner only (like the keystore).

    ``{"version": 1, "users": {name: {"role": ..., "password": ...}}}``; ``path=None`` keeps them
    in memory (a broker that lives as long as its process)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._users: dict[str, BrokerUser] = self._load() if path is not None else {}

    def __contains__(self, name: object) -> bool:
        return name in self._users

    def __iter__(self) -> Iterator[BrokerUser]:
        return iter(sorted(self._users.values()))

    def get(self, name: str) -> BrokerUser:
        try:
            return self._users[name]
        except KeyError:
            where = f" in {self.path}" if self.path else ""
            raise InputError(f"no broker user {name!r}{where}; add it with 'tamc broker add {name} --role ROLE'") from None

    def add(self, name: str, role: Role) -> tuple[BrokerUser, bool]:
        """The user ``name`` in ``role`` (made with a new random password if new) and whether it is new.
        A name already held in another role is refused: a machine never becomes a requester by asking."""
        check_username(name)
        if role not in ROLES:
            raise InputError(f"{role!r} is not a broker role; one of {', '.join(ROLES)}")
        found = self._users.get(name)
        if found is not None:
            if found.role != role:
                raise InputError(f"broker user {name!r} is a {found.role}, not a {role}: choose another name")
            return found, False
        user = BrokerUser(name, role, secrets.token_urlsafe(24))
        self._users[name] = user
        self._save()
        return user, True

    def write_mosquitto(self, password_file: Path, acl_file: Path) -> None:
        """mosquitto's ``password_file`` and ``acl_file`` for every user (0600, replaced whole)."""
        write_private(password_file, "".join(f"{u.name}:{password_hash(u.password)}\n" for u in self))
        write_private(acl_file, "".join("\n".join(acl_lines(u.name, u.role)) + "\n\n" for u in self))

    def _load(self) -> dict[str, BrokerUser]:
        assert self.path is not None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeystoreError(f"{self.path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); run 'chmod 600 {self.path}'")
        try:
            data = json.loads(self.path.read_text("utf-8"))
            if data.get("version") != 1:
                raise ValueError("unknown layout")
            return {name: BrokerUser(name, entry["role"], entry["password"]) for name, entry in data["users"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeystoreError(f"cannot read the broker's users in {self.path}: {exc}") from None

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {"version": 1, "users": {u.name: {"role": u.role, "password": u.password} for u in self}}
        write_private(self.path, json.dumps(doc, indent=1))
