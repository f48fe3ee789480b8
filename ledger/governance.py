"""How a machine's holders govern it: proposals, signed votes, decisions by the charter, and the
execution of what passed — exactly once.

- A proposal freezes the cap table when it opens, so shares bought later do not vote on it.
  Opening is idempotent by key: a machine that asks twice for the same thing opens one proposal.
- A vote is a ballot signed with the key that owns the holder's account (``sign_ballot``); one vote
  per holder, a recast replaces the earlier one. Unsigned, forged, late or non-holder ballots are
  refused with ``VoteRefused`` and change nothing.
- The charter's quorum, threshold and window decide. A proposal closes when its window ends, or
  earlier once the votes cast settle it whatever the others do (which ends recasts too).
- Executing a passed proposal first stores its plan (the ledger steps and the standing change, with
  amounts fixed from the balances then), then runs each step under a key derived from the proposal,
  then marks it executed with the standing change in one transaction. A retry or a restart repeats
  the stored plan, whose postings replay: nothing happens twice.
- Every state change writes an audit record: who, when, what.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from core.clock import Clock, WallClock
from core.errors import (
    BadSignature,
    ExecutionFailed,
    GovernanceError,
    InputError,
    InvalidDid,
    InvalidProposal,
    LedgerError,
    UnknownAccount,
    UnknownProposal,
    VoteRefused,
)
from ledger import _db
from ledger._db import audit, charters, executions, proposals, standings, votes
from ledger.book import Ledger
from ledger.charter import Charter
from ledger.identity import verify_document
from ledger.models import AccountKind, machine_wallet, maintenance_budget, reserve
from ledger.payout import pay_holders
from ledger.proposals import (
    AuditRecord,
    Execution,
    Proposal,
    ProposalKind,
    Standing,
    Tally,
    check_payload,
)

__all__ = ["MACHINE_SELLER", "MOVERS", "Governance", "decide"]

MACHINE_SELLER = "supplier:machines"
"""Where a parent pays a child's purchase price."""
MOVERS = "supplier:moving"
"""Where a machine pays for being moved to another region."""


def decide(tally: Tally, charter: Charter, *, final: bool) -> Literal["passed", "rejected"] | None:
    """The charter's verdict on ``tally``: at the end of the window (``final``), or before it only
    when no vote still to come could change it."""

    def passes(yes: int, no: int, cast: int) -> bool:
        return cast * 10_000 >= charter.quorum_bps * tally.total and yes * 10_000 > charter.threshold_bps * (yes + no)

    if final:
        return "passed" if passes(tally.yes, tally.no, tally.cast) else "rejected"
    rest = tally.total - tally.cast
    if passes(tally.yes, tally.no + rest, tally.total) and passes(tally.yes, tally.no, tally.cast):
        return "passed"  # even if every other holder votes no
    if not passes(tally.yes + rest, tally.no, tally.total):
        return "rejected"  # even if every other holder votes yes
    return None


class Governance:
    """Charters, standings, proposals, votes, executions and the audit trail, in the ledger's database."""

    def __init__(self, ledger: Ledger, *, clock: Clock | None = None) -> None:
        self.ledger = ledger
        self._engine = ledger.engine
        self.clock: Clock = clock or WallClock()
        """Proposal windows run on it: a simulated city's clock runs them at the market's speed."""

    def now(self) -> datetime:
        return self.clock.now()

    # -- charters and standings ---------------------------------------------------------------

    def charter(self, entity: str) -> Charter:
        """The charter of a machine or collective; the default one if it was registered without."""
        row = self._read(lambda c: c.execute(select(charters.c.body).where(charters.c.entity == entity)).first())
        return Charter.model_validate_json(row.body) if row else Charter()

    def register(self, machine_id: str, *, region: str | None = None, charter: Charter | None = None,
                 parent: str | None = None, actor: str = "system") -> Standing:
        """Give ``machine_id`` its charter and standing, once; a repeat returns what is stored."""

        def run(conn: Connection) -> Standing:
            if charter is not None or parent is None:
                self._put_charter(conn, machine_id, charter or Charter(), actor, only_new=True)
            row = conn.execute(select(standings).where(standings.c.machine_id == machine_id)).first()
            if row is None:
                self._write_standing(conn, Standing(machine_id=machine_id, region=region, parent=parent), insert=True)
                self._audit(conn, machine_id, "registered", actor, {"region": region, "parent": parent})
                row = conn.execute(select(standings).where(standings.c.machine_id == machine_id)).one()
            return _standing(row)

        return _db.transaction(self._engine, run)

    def set_charter(self, entity: str, charter: Charter, *, actor: str = "system") -> Charter:
        _db.transaction(self._engine, lambda c: self._put_charter(c, entity, charter, actor, only_new=False))
        return charter

    def _put_charter(self, conn: Connection, entity: str, charter: Charter, actor: str, *, only_new: bool) -> None:
        exists = conn.execute(select(charters.c.entity).where(charters.c.entity == entity)).first()
        if exists and only_new:
            return
        body = charter.model_dump_json()
        if exists:
            conn.execute(update(charters).where(charters.c.entity == entity).values(body=body))
        else:
            conn.execute(charters.insert().values(entity=entity, body=body))
        self._audit(conn, entity, "charter", actor, json.loads(body))

    def standing(self, machine_id: str) -> Standing:
        row = self._read(lambda c: c.execute(select(standings).where(standings.c.machine_id == machine_id)).first())
        return _standing(row) if row else Standing(machine_id=machine_id)

    def standings(self) -> list[Standing]:
        rows = self._read(lambda c: c.execute(select(standings).order_by(standings.c.machine_id)).all())
        return [_standing(r) for r in rows]

    def fixed_costs(self, machine_id: str, *, paid: bool, hours: float) -> Standing:
        """Count an hour (or ``hours``) of fixed costs paid or unpaid: unpaid hours add up, a payment clears them."""

        def run(conn: Connection) -> Standing:
            row = conn.execute(select(standings).where(standings.c.machine_id == machine_id)).first()
            current = _standing(row) if row else Standing(machine_id=machine_id)
            missed = 0.0 if paid else current.missed_h + hours
            if missed != current.missed_h:
                new = current.model_copy(update={"missed_h": missed})
                self._write_standing(conn, new, insert=row is None)
                if not paid:
                    self._audit(conn, machine_id, "unpaid", "charter", {"missed_h": round(missed, 4)})
                return new
            return current

        return _db.transaction(self._engine, run)

    # -- proposals ----------------------------------------------------------------------------

    def open(self, machine_id: str, kind: ProposalKind | str, title: str, *, key: str, opened_by: str,
             payload: dict[str, Any] | None = None, evidence: list[str] | tuple[str, ...] = (),
             window_h: float | None = None, decided: bool = False) -> Proposal:
        """Open a proposal to the holders of ``machine_id``, or return the one opened under ``key``.
        ``decided`` records a decision the charter itself makes (a death): it opens already passed."""
        try:
            kind = ProposalKind(kind)
        except ValueError:
            raise InvalidProposal(f"no proposal kind {kind!r}; kinds: {', '.join(k.value for k in ProposalKind)}") from None
        if not title.strip() or len(title) > 500:
            raise InputError("a proposal needs a title of 1 to 500 characters")
        if not key or len(key) > 300:
            raise InputError("a proposal needs a key of 1 to 300 characters")
        body = check_payload(kind, payload or {})
        window = window_h if window_h is not None else self.charter(machine_id).window_h
        if window <= 0:
            raise InputError(f"voting window must be positive, got {window} h")
        weights = self.ledger.cap_table(machine_id)
        if not weights and not decided:
            raise GovernanceError(f"{machine_id!r} has no shareholders to ask")
        now = self.now()

        def run(conn: Connection) -> Proposal:
            row = conn.execute(select(proposals).where(proposals.c.key == key)).first()
            if row is None:
                pid = str(uuid.uuid4())
                conn.execute(proposals.insert().values(
                    id=pid, key=key, machine_id=machine_id, kind=kind.value, title=title,
                    payload=json.dumps(body, sort_keys=True), evidence=json.dumps(list(evidence)),
                    opened_by=opened_by, opened_at=now, closes_at=now if decided else now + timedelta(hours=window),
                    weights=json.dumps(weights, sort_keys=True), state="passed" if decided else "open",
                ))
                self._audit(conn, machine_id, "opened", opened_by, {"kind": kind.value, "title": title, "payload": body,
                                                                   "weights": weights}, pid)
                if decided:
                    self._audit(conn, machine_id, "passed", opened_by, {"by": "charter", "evidence": list(evidence)}, pid)
                row = conn.execute(select(proposals).where(proposals.c.key == key)).one()
            return _proposal(row)

        return _db.transaction(self._engine, run)

    def get(self, proposal_id: str) -> Proposal:
        row = self._read(lambda c: c.execute(select(proposals).where(proposals.c.id == proposal_id)).first())
        if row is None:
            raise UnknownProposal(f"no proposal {proposal_id!r} (list them with 'tamc proposals')")
        return _proposal(row)

    def find(self, key: str) -> Proposal | None:
        row = self._read(lambda c: c.execute(select(proposals).where(proposals.c.key == key)).first())
        return _proposal(row) if row else None

    def proposals(self, machine_id: str | None = None, *, state: str | None = None) -> list[Proposal]:
        """Proposals, newest first, of one machine or all."""
        query = select(proposals).order_by(proposals.c.opened_at.desc(), proposals.c.key, proposals.c.id)
        if machine_id is not None:
            query = query.where(proposals.c.machine_id == machine_id)
        if state is not None:
            query = query.where(proposals.c.state == state)
        return [_proposal(r) for r in self._read(lambda c: c.execute(query).all())]

    # -- votes --------------------------------------------------------------------------------

    def vote(self, ballot: Mapping[str, Any]) -> Tally:
        """Count a signed ballot (``sign_ballot``) with the shares its holder held when the proposal opened."""
        doc = dict(ballot)
        try:
            did = verify_document(doc, signer_field="voter")
        except (BadSignature, InvalidDid) as exc:
            raise VoteRefused(f"ballot refused: {exc}") from None
        proposal_id, holder, choice = doc.get("proposal_id"), doc.get("holder"), doc.get("choice")
        if choice not in ("yes", "no", "abstain"):
            raise VoteRefused(f"a vote is yes, no or abstain, not {choice!r}")
        if not isinstance(proposal_id, str) or not isinstance(holder, str):
            raise VoteRefused("a ballot names a proposal_id and a holder account")
        proposal = self.get(proposal_id)
        if proposal.state != "open" or self.now() >= proposal.closes_at:
            raise VoteRefused(f"proposal {proposal_id} is closed for voting ({proposal.state})")
        weight = proposal.weights.get(holder)
        if not weight:
            raise VoteRefused(f"{holder!r} held no shares of {proposal.machine_id} when proposal {proposal_id} opened")
        try:
            owner = self.ledger.account(holder).owner
        except UnknownAccount:
            owner = None
        if owner != did:
            raise VoteRefused(f"ballot for {holder!r} is signed by {did}, but the account is owned by {owner or 'no key'}")
        now = self.now()

        def run(conn: Connection) -> None:
            state = conn.execute(select(proposals.c.state).where(proposals.c.id == proposal_id)).scalar()
            if state != "open":
                raise VoteRefused(f"proposal {proposal_id} is closed for voting ({state})")
            conn.execute(votes.delete().where(votes.c.proposal_id == proposal_id, votes.c.holder == holder))
            conn.execute(votes.insert().values(proposal_id=proposal_id, holder=holder, choice=choice, weight=weight, cast_at=now))
            self._audit(conn, proposal.machine_id, "vote", holder, {"choice": choice, "weight": weight, "ballot": doc}, proposal_id)

        _db.transaction(self._engine, run)
        return self.tally(proposal_id)

    def tally(self, proposal_id: str) -> Tally:
        proposal = self.get(proposal_id)
        rows = self._read(lambda c: c.execute(select(votes).where(votes.c.proposal_id == proposal_id)).all())
        sums = {"yes": 0, "no": 0, "abstain": 0}
        for r in rows:
            sums[r.choice] += r.weight
        return Tally(proposal_id=proposal_id, total=sum(proposal.weights.values()), voters={r.holder: r.choice for r in rows}, **sums)

    # -- decisions ----------------------------------------------------------------------------

    def close(self, proposal_id: str) -> Proposal:
        """Decide an open proposal if its window has ended or its votes settle it; else leave it open."""
        proposal = self.get(proposal_id)
        if proposal.state != "open":
            return proposal
        tally = self.tally(proposal_id)
        final = self.now() >= proposal.closes_at
        verdict = decide(tally, self.charter(proposal.machine_id), final=final)
        if verdict is None:
            return proposal

        def run(conn: Connection) -> None:
            done = conn.execute(update(proposals).where(proposals.c.id == proposal_id, proposals.c.state == "open")
                                .values(state=verdict))
            if done.rowcount:
                why = "window ended" if final else "settled by the votes cast"
                self._audit(conn, proposal.machine_id, verdict, "charter", {
                    "yes": tally.yes, "no": tally.no, "abstain": tally.abstain, "total": tally.total, "why": why}, proposal_id)

        _db.transaction(self._engine, run)
        return self.get(proposal_id)

    def close_due(self, machine_id: str | None = None) -> list[Proposal]:
        """Decide every open proposal that can be decided now; returns those decided."""
        return [p for p in (self.close(o.id) for o in self.proposals(machine_id, state="open")) if p.state != "open"]

    # -- execution ----------------------------------------------------------------------------

    def execution(self, proposal_id: str) -> Execution | None:
        row = self._read(lambda c: c.execute(select(executions).where(executions.c.proposal_id == proposal_id)).first())
        return _execution(row) if row else None

    def execute(self, proposal_id: str, *, actor: str = "system") -> Execution:
        """Carry out a passed proposal, once. Repeating it (a retry, a restart) finishes a run cut
        short or returns the finished one with ``replayed=True``."""
        proposal = self.get(proposal_id)
        if proposal.state == "executed":
            done = self.execution(proposal_id)
            assert done is not None
            return done.model_copy(update={"replayed": True})
        if proposal.state != "passed":
            raise GovernanceError(f"proposal {proposal_id} is {proposal.state}; only a passed proposal is executed")
        plan = self._claim(proposal, actor)
        try:
            for i, step in enumerate(plan["steps"]):
                self._run_step(step, key=f"exec:{proposal_id}:{i}")
        except (LedgerError, ExecutionFailed) as exc:
            self._finish(proposal, plan, actor, failed=f"{type(exc).__name__}: {exc}")
            raise ExecutionFailed(f"proposal {proposal_id} ({proposal.kind.value}) could not be carried out: {exc}") from None
        return self._finish(proposal, plan, actor)

    def _claim(self, proposal: Proposal, actor: str) -> dict[str, Any]:
        """The stored plan of this execution, made and stored now if this is the first attempt."""
        existing = self.execution(proposal.id)
        if existing is not None:
            row = self._read(lambda c: c.execute(select(executions.c.plan).where(executions.c.proposal_id == proposal.id)).one())
            return json.loads(row.plan)  # type: ignore[no-any-return]
        plan = self._plan(proposal)

        def run(conn: Connection) -> dict[str, Any]:
            row = conn.execute(select(executions.c.plan).where(executions.c.proposal_id == proposal.id)).first()
            if row is not None:  # another executor got here first: follow its plan
                return json.loads(row.plan)  # type: ignore[no-any-return]
            conn.execute(executions.insert().values(proposal_id=proposal.id, plan=json.dumps(plan, sort_keys=True),
                                                    state="running", detail="", started_at=self.now()))
            self._audit(conn, proposal.machine_id, "executing", actor, plan, proposal.id)
            return plan

        return _db.transaction(self._engine, run)

    def _finish(self, proposal: Proposal, plan: dict[str, Any], actor: str, *, failed: str = "") -> Execution:
        state = "failed" if failed else "done"

        def run(conn: Connection) -> None:
            moved = conn.execute(update(proposals).where(proposals.c.id == proposal.id, proposals.c.state == "passed")
                                 .values(state="failed" if failed else "executed"))
            if not moved.rowcount:
                return  # finished by another executor
            if not failed:
                for change in plan["standings"]:
                    self._change_standing(conn, change)
                if plan.get("charter"):
                    entity, body = plan["charter"]
                    self._put_charter(conn, entity, Charter.model_validate(body), actor, only_new=True)
            conn.execute(update(executions).where(executions.c.proposal_id == proposal.id)
                         .values(state=state, detail=failed, finished_at=self.now()))
            self._audit(conn, proposal.machine_id, "failed" if failed else "executed", actor,
                        {"error": failed} if failed else {"standings": plan["standings"]}, proposal.id)

        _db.transaction(self._engine, run)
        done = self.execution(proposal.id)
        assert done is not None
        return done

    def _plan(self, p: Proposal) -> dict[str, Any]:
        """The ledger steps and standing changes of ``p``, amounts fixed from the balances now."""
        m, pay, kind = p.machine_id, p.payload, p.kind
        wallet = machine_wallet(m)
        steps: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        plan: dict[str, Any] = {"steps": steps, "standings": changes}
        if kind is ProposalKind.MAINTENANCE:
            budget = pay["budget"]
            from_reserve = min(budget, self._balance(reserve(m)))
            moves = [[reserve(m), maintenance_budget(m), from_reserve], [wallet, maintenance_budget(m), budget - from_reserve]]
            steps.append({"op": "open", "account": maintenance_budget(m), "owner": self._owner(wallet)})
            steps.append({"op": "transfers", "moves": [mv for mv in moves if mv[2] > 0], "memo": f"maintenance budget ({p.title})"})
        elif kind is ProposalKind.PRICING:
            changes.append({"machine_id": m, "policy": {k: pay[k] for k in ("margin_bps", "price_floor") if k in pay}})
        elif kind is ProposalKind.TERRITORY:
            changes.append({"machine_id": m, "policy": {"territory": pay["regions"]}})
        elif kind is ProposalKind.PAYOUT:
            changes.append({"machine_id": m, "retain_bps": pay["retain_bps"]})
        elif kind is ProposalKind.SPAWN:
            child = pay["child_id"]
            steps += [{"op": "open", "account": machine_wallet(child), "owner": pay["child_did"]},
                      {"op": "open", "account": reserve(child), "owner": None}]
            steps.append({"op": "open", "account": MACHINE_SELLER, "kind": "system"})
            moves = [[wallet, MACHINE_SELLER, pay["purchase"]], [wallet, machine_wallet(child), pay["capital"]]]
            steps.append({"op": "transfers", "moves": [mv for mv in moves if mv[2] > 0], "memo": f"spawn {child}"})
            owners = {wallet: 100} if self.charter(m).child_shares == "parent" else dict(p.weights)
            steps.append({"op": "shares", "entity": child, "allocation": owners})
            parent = self.standing(m)
            policy = {k: v for k, v in parent.policy.items() if k != "territory"}  # the child serves where it is
            changes.append({"machine_id": child, "region": pay["region"], "parent": m, "policy": policy,
                            "retain_bps": parent.retain_bps})
            plan["charter"] = [child, self.charter(m).model_dump(mode="json")]
        elif kind is ProposalKind.RELOCATE:
            if pay.get("cost"):
                steps.append({"op": "open", "account": MOVERS, "kind": "system"})
                steps.append({"op": "transfers", "moves": [[wallet, MOVERS, pay["cost"]]], "memo": f"move to {pay['region']}"})
            change: dict[str, Any] = {"machine_id": m, "region": pay["region"], "status": "active"}  # it moves to work
            if pay.get("territory"):
                change["policy"] = {"territory": pay["territory"]}
            changes.append(change)
        elif kind in (ProposalKind.PARK, ProposalKind.RESUME):
            changes.append({"machine_id": m, "status": "parked" if kind is ProposalKind.PARK else "active"})
        elif kind is ProposalKind.RETIRE:
            salvage = pay.get("salvage", 0)
            if salvage:
                steps.append({"op": "mint", "account": wallet, "amount": salvage, "memo": f"{m} sold for salvage"})
            swept = {acct: self._balance(acct) for acct in (reserve(m), maintenance_budget(m))}
            if moves := [[acct, wallet, amount] for acct, amount in swept.items() if amount > 0]:
                steps.append({"op": "transfers", "moves": moves, "memo": f"{m} retired: accounts closed"})
            total = self._balance(wallet) + salvage + sum(swept.values())
            if total and p.weights:
                steps.append({"op": "payout", "entity": m, "source": wallet, "amount": total, "memo": f"{m} retired: final payout"})
            changes.append({"machine_id": m, "status": "retired"})
        elif kind is ProposalKind.EXPENSE:
            steps.append({"op": "transfers", "moves": [[wallet, pay["payee"], pay["amount"]]], "memo": pay.get("memo") or p.title})
        return plan

    def _run_step(self, step: dict[str, Any], *, key: str) -> None:
        op = step["op"]
        if op == "open":
            kind = AccountKind(step.get("kind", AccountKind.WALLET))
            self.ledger.open_account(step["account"], kind=kind, owner=step.get("owner"))
        elif op == "transfers":
            self.ledger.transfers([tuple(mv) for mv in step["moves"]], key=key, memo=step["memo"])
        elif op == "mint":
            self.ledger.mint(step["account"], step["amount"], key=key, memo=step["memo"])
        elif op == "payout":
            pay_holders(self.ledger, step["entity"], step["source"], step["amount"], key=key, memo=step["memo"])
        elif op == "shares":
            if self.ledger.posting(key) is None and self.ledger.has_shares(step["entity"]):
                raise ExecutionFailed(f"{step['entity']} already has shares; a child needs a new id")
            self.ledger.issue_shares(step["entity"], step["allocation"], key=key, memo="shares of a spawned machine")
        else:  # pragma: no cover - plans are made above
            raise AssertionError(f"unknown plan step {op!r}")

    def _change_standing(self, conn: Connection, change: dict[str, Any]) -> None:
        mid = change["machine_id"]
        row = conn.execute(select(standings).where(standings.c.machine_id == mid)).first()
        current = _standing(row) if row else Standing(machine_id=mid)
        update_: dict[str, Any] = {k: change[k] for k in ("status", "region", "retain_bps", "parent") if k in change}
        if "policy" in change:
            update_["policy"] = {**current.policy, **change["policy"]}
        self._write_standing(conn, current.model_copy(update=update_), insert=row is None)

    def _write_standing(self, conn: Connection, s: Standing, *, insert: bool) -> None:
        values = dict(status=s.status, region=s.region, policy=json.dumps(s.policy, sort_keys=True), retain_bps=s.retain_bps,
                      parent=s.parent, missed_h=s.missed_h, changed_at=self.now(), version=s.version + 1)
        if insert:
            conn.execute(standings.insert().values(machine_id=s.machine_id, **values))
        else:
            conn.execute(update(standings).where(standings.c.machine_id == s.machine_id).values(**values))

    # -- audit --------------------------------------------------------------------------------

    def audit(self, entity: str | None = None, *, proposal_id: str | None = None, limit: int = 500) -> list[AuditRecord]:
        """The audit trail, oldest first."""
        query = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if entity is not None:
            query = query.where(audit.c.entity == entity)
        if proposal_id is not None:
            query = query.where(audit.c.proposal_id == proposal_id)
        rows = self._read(lambda c: c.execute(query).all())
        return [AuditRecord(at=_db.aware(r.at), entity=r.entity, proposal_id=r.proposal_id, action=r.action, actor=r.actor,
                            detail=json.loads(r.detail)) for r in reversed(rows)]

    def _audit(self, conn: Connection, entity: str, action: str, actor: str, detail: dict[str, Any],
               proposal_id: str | None = None) -> None:
        conn.execute(audit.insert().values(at=self.now(), entity=entity, proposal_id=proposal_id, action=action, actor=actor,
                                           detail=json.dumps(detail, sort_keys=True, default=str)))

    # -- helpers ------------------------------------------------------------------------------

    def _read(self, fn: Any) -> Any:
        return _db.transaction(self._engine, fn, write=False)

    def _balance(self, account: str) -> int:
        try:
            return self.ledger.balance(account)
        except UnknownAccount:
            return 0

    def _owner(self, account: str) -> str | None:
        try:
            return self.ledger.account(account).owner
        except UnknownAccount:
            return None


def _proposal(row: Any) -> Proposal:
    return Proposal(
        id=row.id, machine_id=row.machine_id, kind=ProposalKind(row.kind), title=row.title, payload=json.loads(row.payload),
        evidence=tuple(json.loads(row.evidence)), opened_by=row.opened_by, opened_at=_db.aware(row.opened_at),
        closes_at=_db.aware(row.closes_at), weights=json.loads(row.weights), state=row.state,
    )


def _standing(row: Any) -> Standing:
    return Standing(machine_id=row.machine_id, status=row.status, region=row.region, policy=json.loads(row.policy),
                    retain_bps=row.retain_bps, parent=row.parent, missed_h=row.missed_h,
                    changed_at=_db.aware(row.changed_at), version=row.version)


def _execution(row: Any) -> Execution:
    plan = json.loads(row.plan)
    return Execution(proposal_id=row.proposal_id, state=row.state, steps=tuple(plan["steps"]), detail=row.detail)
