"""Paying a machine's holders, through the collectives among them.

A holder may itself be owned in shares: a fab-cell DAO (``dao:fab-cell``) that holds shares of
several machines has members of its own. What such a holder receives is passed on to its members
in the same breath, pro rata and exact to the micro-unit, under keys derived from the first
payment, so a retry repeats every step instead of doubling one. A machine holding shares of its
child keeps what it receives: that is the parent's income (its wallet is not a collective).
"""

from __future__ import annotations

from ledger.book import Ledger
from ledger.models import Posting

__all__ = ["MAX_DEPTH", "pay_holders"]

MAX_DEPTH = 4
"""Collectives of collectives are followed this deep; deeper chains keep the money at the last one."""


def pay_holders(ledger: Ledger, entity: str, source: str, amount: int, *, key: str, memo: str = "",
                _depth: int = 0) -> list[Posting]:
    """Split ``amount`` from ``source`` among the holders of ``entity``, and on through every holder
    that is a collective. Returns every posting made (or replayed), the first one first."""
    first = ledger.split_revenue(entity, source, amount, key=key, memo=memo)
    made = [first]
    if _depth >= MAX_DEPTH:
        return made
    paid = [leg for leg in first.legs if leg.amount > 0 and leg.account != source]
    collectives = ledger.issued(leg.account for leg in paid)  # one read for every holder
    for leg in paid:
        if leg.account in collectives:
            made += pay_holders(ledger, leg.account, leg.account, leg.amount, key=f"{key}>{leg.account}",
                                memo=f"{memo} (via {leg.account})".strip(), _depth=_depth + 1)
    return made
