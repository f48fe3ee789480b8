"""Job ids belong to the requester that posts them (docs/protocol.md, "Job ids").

A job id is ``{owner}.{local}``: ``owner`` is a ledger account the requester holds (the wallet it
pays from, or for a machine hiring a technician, the machine's own wallet), and the ledger says
which did owns that account. A call counts only when its signer owns the account its job id
names, so nobody can post a call, early or late, under another requester's ids; escrows, topics and
contracts keyed by the job id are then keyed by its owner too. Whatever follows the call (awards,
releases, payments) is checked against the call's signer, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["OWNED_PATTERN", "SEPARATOR", "JobOwners", "owned", "owned_local", "owner_of"]

SEPARATOR = "."
OWNED_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:_-]*\.[A-Za-z0-9:._-]+$"
"""A job id that names its owner: an account (no dots), a dot, the owner's own reference; within
``core.ids.NAME_PATTERN`` (at most 128 characters)."""


def owned(owner: str, local: str) -> str:
    """``local`` in ``owner``'s namespace (unchanged if it is there already)."""
    return local if local.startswith(owner + SEPARATOR) else f"{owner}{SEPARATOR}{local}"


def owned_local(job_id: str) -> str:
    """The part of a job id its owner chose (the whole id when it names no owner)."""
    _, sep, local = job_id.partition(SEPARATOR)
    return local if sep and local else job_id


def owner_of(job_id: str) -> str:
    """The account a job id names as its owner ('' when it names none)."""
    owner, sep, local = job_id.partition(SEPARATOR)
    return owner if sep and local else ""


class JobOwners:
    """Answers "may ``did`` post job ``job_id``?" from the ledger: ``lookup(account)`` is the did that
    owns an account, or None. Answers are kept (an account's owner never changes)."""

    def __init__(self, lookup: Callable[[str], str | None]) -> None:
        self._lookup = lookup
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def owns(self, job_id: str, did: str) -> bool:
        account = owner_of(job_id)
        if not account:
            return False
        with self._lock:
            known = self._known.get(account)
        if known is None:
            known = self._lookup(account)
            if known is None:
                return False
            with self._lock:
                self._known[account] = known
        return known == did
