"""A collective holder — a fab-cell DAO that holds shares of several machines — votes as one.

Its members decide its vote in a proposal of its own (kind ``delegate``), under its own charter and
weighted by their shares of the collective, opened when a machine it holds asks something. When
that inner proposal is decided, the collective signs one ballot with its own key: yes if its
members passed it, no if they rejected it. Money flows up the same way (``ledger.payout``).
"""

from __future__ import annotations

from core.errors import VoteRefused
from ledger.governance import Governance
from ledger.identity import Identity
from ledger.proposals import Choice, Proposal, ProposalKind, Tally, sign_ballot

__all__ = ["Collective"]


class Collective:
    def __init__(self, account: str, identity: Identity, governance: Governance) -> None:
        """``account`` is both its wallet and its share class (``dao:fab-cell``); ``identity`` owns the account."""
        self.account = account
        self.identity = identity
        self.governance = governance

    def ask(self, outer: Proposal) -> Proposal | None:
        """Open (once) the members' proposal deciding the collective's vote on ``outer``; None if it holds no shares there."""
        if not outer.weights.get(self.account) or outer.state != "open":
            return None
        left_h = (outer.closes_at - self.governance.now()).total_seconds() / 3600
        window = min(self.governance.charter(self.account).window_h, max(left_h / 2, 1e-3))
        return self.governance.open(
            self.account, ProposalKind.DELEGATE, f"How {self.account} votes on {outer.machine_id}: {outer.title}"[:500],
            key=f"delegate:{self.account}:{outer.id}", opened_by=self.account, window_h=window,
            payload={"proposal_id": outer.id}, evidence=(f"{outer.kind.value} proposal {outer.id} of {outer.machine_id}",
                                                         *outer.evidence))

    def cast(self, inner: Proposal) -> Tally | None:
        """Cast the collective's vote on the outer proposal once its members have decided; None before."""
        inner = self.governance.close(inner.id)
        if inner.state in ("open", "failed"):
            return None
        outer_id = inner.payload["proposal_id"]
        choice: Choice = "no" if inner.state == "rejected" else "yes"  # passed, or passed and executed (a no-op)
        try:
            return self.governance.vote(sign_ballot(self.identity, outer_id, self.account, choice))
        except VoteRefused:
            return None  # the outer proposal closed before the members decided
