"""What a holder does with their shares — read the cap table, list, open and vote on proposals —
with the key in the keystore that owns their ledger account. The CLI (``tamc shares``, ``tamc
proposals``, ``tamc propose``, ``tamc vote``) and the server's API both call these.

Names: ``alice`` is the account ``holder:alice`` and signs with the key ``holder-alice``; a machine
(``machine:prusa-n1``) signs with the key named by its id; a collective (``dao:fab-cell``) with the
key of that name — the names the demo city stores its keys under.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from core.errors import GovernanceError, InputError, UnknownAccount, UnknownProposal, VoteRefused
from core.money import format_units, parse_units
from ledger.book import Ledger
from ledger.governance import Governance
from ledger.identity import Identity
from ledger.keystore import Keystore
from ledger.models import machine_wallet, reserve
from ledger.proposals import Proposal, ProposalKind, sign_ballot

__all__ = ["ProposalRow", "ShareRow", "cast_vote", "holder_account", "key_name", "list_proposals", "open_proposal", "shares"]


def holder_account(name: str) -> str:
    """A stakeholder's account: ``holder:{name}``; an account id (``dao:…``, ``machine:…``) stays as it is."""
    return name if ":" in name else f"holder:{name}"


def key_name(account: str) -> str:
    """The keystore name of the key that owns ``account``."""
    if account.startswith("holder:"):
        return "holder-" + account.removeprefix("holder:")
    if account.startswith("machine:"):
        return account.removeprefix("machine:")
    return account


class ShareRow(BaseModel):
    holder: str
    units: int
    share: str
    key: str | None


class ProposalRow(BaseModel):
    id: str
    machine: str
    kind: str
    title: str
    state: str
    yes: int
    no: int
    abstain: int
    total: int
    closes_at: str
    opened_by: str
    payload: dict[str, Any]
    evidence: list[str]


def shares(ledger: Ledger, gov: Governance, machine: str) -> dict[str, Any]:
    """The machine's cap table, standing, charter and accounts."""
    table = ledger.cap_table(machine)
    if not table:
        raise InputError(f"{machine!r} has no shares issued in this ledger (is it the right --data-dir or --ledger?)")
    total = sum(table.values())
    rows = [ShareRow(holder=h, units=u, share=f"{u / total:.1%}", key=_owner(ledger, h)) for h, u in table.items()]
    standing = gov.standing(machine)
    return {"machine": machine, "holders": [r.model_dump() for r in rows], "total_units": total,
            "standing": standing.model_dump(mode="json", exclude={"changed_at"}),
            "charter": gov.charter(machine).model_dump(mode="json"),
            "wallet": format_units(_balance(ledger, machine_wallet(machine))),
            "reserve": format_units(_balance(ledger, reserve(machine)))}


def list_proposals(gov: Governance, machine: str | None, state: str | None) -> list[ProposalRow]:
    out = []
    for p in gov.proposals(machine, state=state):
        t = gov.tally(p.id)
        late = p.state == "open" and gov.now() >= p.closes_at
        out.append(ProposalRow(id=p.id, machine=p.machine_id, kind=p.kind.value, title=p.title,
                               state="open, window ended" if late else p.state, yes=t.yes, no=t.no, abstain=t.abstain,
                               total=t.total, closes_at=p.closes_at.isoformat(timespec="minutes"), opened_by=p.opened_by,
                               payload=p.payload, evidence=list(p.evidence)))
    return out


def open_proposal(ledger: Ledger, gov: Governance, keys: Keystore | None, machine: str, kind: str, who: str, *,
                  title: str | None, fields: dict[str, str | None], rationale: str = "") -> Proposal:
    """Open a proposal as holder ``who``; the payload comes from the command's options. ``keys``
    None: the caller has already checked that ``who`` speaks for the account (the server did)."""
    account = holder_account(who)
    if keys is not None:
        _signer(ledger, keys, account)  # only a key that owns the account may speak for it
    if not ledger.cap_table(machine).get(account):
        raise VoteRefused(f"{account!r} holds no shares of {machine!r}; only its holders propose")
    try:
        kind_ = ProposalKind(kind)
    except ValueError:
        raise InputError(f"no proposal kind {kind!r}; kinds: {', '.join(k.value for k in ProposalKind if k.value != 'delegate')}") from None
    payload: dict[str, Any] = {"rationale": rationale} if rationale else {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in ("budget", "price_floor", "cost", "salvage", "purchase", "capital", "amount"):
            payload[name] = parse_units(value)
        elif name in ("margin_bps", "retain_bps"):
            payload[name] = _int(name, value)
        elif name in ("regions", "territory"):
            payload[name] = [r.strip() for r in value.split(",") if r.strip()]
        else:
            payload[name] = value
    if kind_ is ProposalKind.SPAWN and "child_id" in payload and "child_did" not in payload and keys is not None:
        payload["child_did"] = keys.get_or_create(payload["child_id"]).did
    text = title or f"{kind_.value} for {machine}"
    key = f"cli:{machine}:{kind_.value}:{account}:{gov.now().isoformat()}"
    return gov.open(machine, kind_, text, key=key, opened_by=account, payload=payload, evidence=(f"proposed by {account}",))


def cast_vote(ledger: Ledger, gov: Governance, keys: Keystore, proposal: str, choice: str, who: str) -> tuple[Proposal, str]:
    """Sign and cast ``who``'s vote; decide the proposal if the votes settle it and execute it if it
    passed. Returns the proposal and what happened."""
    if choice not in ("yes", "no", "abstain"):
        raise InputError(f"a vote is yes, no or abstain, not {choice!r}")
    p = resolve(gov, proposal)
    account = holder_account(who)
    signer = _signer(ledger, keys, account)
    tally = gov.vote(sign_ballot(signer, p.id, account, choice))  # type: ignore[arg-type]
    p = gov.close(p.id)
    said = f"{account} voted {choice} with {p.weights[account]} units: yes {tally.yes}, no {tally.no}, abstain {tally.abstain} of {tally.total}"
    if p.state == "passed":
        done = gov.execute(p.id, actor=account)
        said += f"; passed and executed ({len(done.steps)} ledger steps)"
    elif p.state != "open":
        said += f"; {p.state}"
    return p, said


def resolve(gov: Governance, proposal: str) -> Proposal:
    """A proposal by its id or the first characters of it."""
    try:
        return gov.get(proposal)
    except GovernanceError:
        found = [p for p in gov.proposals() if p.id.startswith(proposal)] if len(proposal) >= 4 else []
        if len(found) == 1:
            return found[0]
        raise UnknownProposal(f"no single proposal {proposal!r} ({len(found)} match; list them with 'tamc proposals')") from None


def _signer(ledger: Ledger, keys: Keystore, account: str) -> Identity:
    name = key_name(account)
    if name not in keys.names():
        raise VoteRefused(f"no key {name!r} in {keys.path} to sign for {account}; create it with 'tamc keys new {name}'")
    identity = keys.get(name)
    try:
        owner = ledger.account(account).owner
    except UnknownAccount:
        raise VoteRefused(f"{account!r} has no account in this ledger: it held no shares of anything") from None
    if owner is None:
        ledger.bind_owner(account, identity.did)  # the first key to speak for an unclaimed account owns it
    elif owner != identity.did:
        raise VoteRefused(f"key {name!r} ({identity.did}) does not own {account} (owned by {owner})")
    return identity


def _owner(ledger: Ledger, account: str) -> str | None:
    try:
        return ledger.account(account).owner
    except UnknownAccount:
        return None


def _balance(ledger: Ledger, account: str) -> int:
    try:
        return ledger.balance(account)
    except UnknownAccount:
        return 0


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name} must be a whole number of basis points, got {value!r}") from None
