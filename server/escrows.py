"""The ledger as a requester outside TAMC's processes may use it: its own escrows and accounts, and
the machines' registered dids (docs/protocol.md, "The ledger over HTTP").

A principal moves money only out of accounts its key owns, and only along a job's three ends: into
the job's escrow, from the escrow to the wallet of a registered machine, or back to the payer. It
never mints, never reads or moves another party's account, and every move carries the same
idempotency key as the in-process requester's (``escrow:{job}``, ``release:{job}``,
``refund:{job}``), so a retried request repeats the posting instead of doubling it, and a machine
checks an escrow opened here exactly as it checks one opened in-process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from core.errors import Forbidden, InputError, RefundRefused, UnknownAccount
from core.ids import check_name
from hub.jobids import owner_of
from ledger import AccountKind, Ledger, settlement
from ledger.models import Account, machine_wallet
from server.access import Principal
from server.feed import Heard
from server.schemas import AccountView, EscrowView, RegisteredMachine

__all__ = ["AT_WORK", "Escrows"]

AT_WORK = frozenset({"started", "progress", "handoff", "resumed", "kept", "done"})
"""A machine's last word on a job that means it is doing it (or did it): no refund then."""


class Escrows:
    """What one principal may do with the ledger's money, checked against the ledger's owners."""

    def __init__(self, ledger: Ledger, heard: Callable[[str], Sequence[Heard]]) -> None:
        self.ledger = ledger
        self._heard = heard
        """A job's events as the server heard them on the hub, with who signed each."""

    # -- reading ---------------------------------------------------------------------------------

    def machines(self) -> list[RegisteredMachine]:
        """Every machine wallet and the did it was registered with: a bid, offer or ``done`` counts
        only from that did."""
        prefix = machine_wallet("")
        return [RegisteredMachine(machine_id=a.id.removeprefix(prefix), did=a.owner, account=a.id)
                for a in self.ledger.accounts() if a.id.startswith(prefix) and a.owner]

    def accounts(self, caller: Principal) -> list[AccountView]:
        return [self._view(a.id, a.kind) for a in self.ledger.accounts()
                if a.owner == caller.did and a.kind is not AccountKind.ESCROW]

    def account(self, caller: Principal, account_id: str) -> AccountView:
        return self._view(account_id, self._own(caller, account_id).kind)

    def escrow(self, caller: Principal, job_id: str) -> EscrowView:
        escrow = self.ledger.escrow(check_name(job_id, "job id"))
        self._own(caller, escrow.payer, what=f"the escrow of job {job_id}")
        return self._escrow_view(job_id)

    # -- moving money ----------------------------------------------------------------------------

    def open(self, caller: Principal, job_id: str, payer: str, amount: int, expires_at: datetime | None = None) -> EscrowView:
        """Hold ``amount`` from ``payer`` for ``job_id``: both the job id's namespace and the payer
        must be the caller's. Repeating the same open returns the same escrow."""
        check_name(job_id, "job id")
        namespace = owner_of(job_id)
        if not namespace:
            raise InputError(f"job id {job_id!r} names no owner: a job id is '{{account}}.{{local}}', "
                             "under an account your key owns (docs/protocol.md, 'Job ids')")
        self._own(caller, namespace, what=f"the namespace of job {job_id}")
        self._own(caller, payer, what="the payer")
        settlement.fund_job(self.ledger, job_id, payer, amount, expires_at=expires_at)
        return self._escrow_view(job_id)

    def release(self, caller: Principal, job_id: str, machine_id: str) -> EscrowView:
        """Pay the whole escrow to a registered machine's wallet (the job is done)."""
        self.escrow(caller, job_id)
        check_name(machine_id, "machine id")
        if settlement.machine_owner(self.ledger, machine_id) is None:
            raise UnknownAccount(f"no machine {machine_id!r} is registered in the ledger (GET /v1/ledger/machines)")
        settlement.pay_job(self.ledger, job_id, machine_id)
        return self._escrow_view(job_id)

    def refund(self, caller: Principal, job_id: str) -> EscrowView:
        """Return the whole escrow to its payer (the job was not done): refused while the job's
        machine says it is at work on it or has done it, so a requester cannot take back the price
        of work under way."""
        self.escrow(caller, job_id)
        if (at_work := self.at_work(job_id)) is not None:
            machine, kind = at_work
            raise RefundRefused(f"{machine} said '{kind}' for job {job_id}: release the escrow to it after 'done', "
                                "or refund once it says 'failed' or 'aborted'")
        settlement.refund_job(self.ledger, job_id)
        return self._escrow_view(job_id)

    def expire(self, job_id: str) -> EscrowView:
        """Refund an expired escrow to its payer: anyone may ask (the money can go nowhere else)."""
        settlement.expire_job(self.ledger, check_name(job_id, "job id"))
        return self._escrow_view(job_id)

    def at_work(self, job_id: str) -> tuple[str, str] | None:
        """The machine and its last word, if the latest step a machine signed (with the did it
        registered) for the job says it is doing the job or did it."""
        latest: tuple[str, str] | None = None
        for sender, event in self._heard(job_id):
            if event.kind not in ("funded", "paid") and settlement.machine_owner(self.ledger, event.machine_id) == sender:
                latest = (event.machine_id, event.kind)
        return latest if latest is not None and latest[1] in AT_WORK else None

    # -- helpers ---------------------------------------------------------------------------------

    def _own(self, caller: Principal, account_id: str, *, what: str = "the account") -> Account:
        account = self.ledger.account(check_name(account_id, "account"))
        if account.owner != caller.did:
            raise Forbidden(f"{what} ({account_id}) is not an account of {caller.name}'s key")
        return account

    def _view(self, account_id: str, kind: AccountKind) -> AccountView:
        return AccountView(id=account_id, kind=kind.value, balance=self.ledger.balance(account_id))

    def _escrow_view(self, job_id: str) -> EscrowView:
        escrow = self.ledger.escrow(job_id)
        opened = self.ledger.posting(f"escrow:{job_id}")
        closed = self.ledger.posting(f"release:{job_id}") or self.ledger.posting(f"refund:{job_id}")
        to = next((leg.account for leg in closed.legs if leg.amount > 0), None) if closed else None
        return EscrowView(job_id=job_id, payer=escrow.payer, amount=escrow.amount, state=escrow.state.value,
                          opened_by=opened.id if opened else None, closed_by=closed.id if closed else None, paid_to=to,
                          expires_at=escrow.expires_at)
