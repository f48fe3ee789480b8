"""Whether a machine may cast a vote with the shares it holds of another machine: its holders'
mandate (``charter.VoteMandate``), applied the same to the model's ``vote`` tool and to the rules'
own votes (``agents.steward.vote_as_holder``), so nothing a model reads can widen it."""

from __future__ import annotations

from collections.abc import Collection

from ledger.charter import MONEY_OR_LIFE, VoteMandate
from ledger.proposals import Choice, Proposal

__all__ = ["mandate_refusal"]


def mandate_refusal(p: Proposal, choice: Choice, *, mandate: VoteMandate, principals: Collection[str],
                    payees: Collection[str] | None = None) -> tuple[str, str] | None:
    """Why the mandate forbids ``choice`` on ``p`` — a (code, reason) pair — or None if it allows it.
    ``principals`` are the voting machine's own holders (accounts); ``payees``, its approved payees.
    Abstaining is always allowed: it is what the machine does when it may not vote."""
    if choice == "abstain":
        return None
    kind = p.kind.value
    if kind not in mandate.kinds:
        return "policy.vote_mandate", (f"its holders' mandate covers votes on {', '.join(mandate.kinds) or 'nothing'}, "
                                       f"not on a {kind} proposal ({p.id}): it abstains")
    if choice == "no":
        if p.opened_by in principals:
            return "policy.vote_mandate", (f"{p.opened_by} holds shares of this machine: it does not vote against a proposal "
                                           f"its own holders made ({p.id})")
        return None
    payee = p.payload.get("payee")
    if payees is not None and isinstance(payee, str) and payee not in payees:
        return "policy.payee", f"{p.id} pays {payee!r}, not an approved payee (approved: {', '.join(payees)})"
    if kind in MONEY_OR_LIFE and p.opened_by not in principals:
        child_asked = p.opened_by == f"machine:{p.machine_id}" and kind in mandate.child_may_ask
        if not child_asked:
            return "policy.vote_mandate", (f"a {kind} proposal moves money or retires or reprices a machine: it gets this "
                                           f"machine's yes only when its own holders asked for it, and {p.opened_by} "
                                           f"is not one of them ({p.id})")
    return None
