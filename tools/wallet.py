"""Wallet tools: balance, statement, earnings by period, and paying an expense within policy.

An expense is paid only to a payee the policy lists, up to the per-expense and 24-hour limits the
holders set; above a limit the tool opens an expense proposal for the holders and pays nothing.
The checks live here, in the tool, so no prompt or model output can route around them.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any, Literal

from pydantic_ai import FunctionToolset, RunContext

from core.errors import ApprovalRequired, InputError, LedgerError, PolicyRefused
from core.money import format_units, parse_units, require_micros
from ledger import Ledger
from ledger.settlement import machine_wallet, reserve
from tools.deps import MachineDeps

__all__ = ["Earnings", "Period", "earnings", "pay_expense", "wallet_tools"]

Period = Literal["day", "week", "month", "all"]
PERIODS: dict[str, timedelta | None] = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30), "all": None}
EXPENSE_PREFIX = "expense:"


def _ledger(deps: MachineDeps) -> Ledger:
    if deps.ledger is None:
        raise PolicyRefused("wallet.none", "this machine has no ledger configured")
    return deps.ledger


Earnings = dict[str, Any]


def earnings(deps: MachineDeps, period: Period = "week") -> Earnings:
    """Revenue, costs paid and payouts of the machine's wallet over ``period`` (wall-clock time)."""
    if period not in PERIODS:
        raise InputError(f"period is one of {', '.join(PERIODS)}, not {period!r}")
    ledger = _ledger(deps)
    span = PERIODS[period]
    since = deps.clock.now() - span if span else None
    lines = ledger.statement(machine_wallet(deps.machine_id), limit=None, since=since)
    sums = {"revenue": 0, "energy": 0, "materials": 0, "wear_reserve": 0, "to_owners": 0, "expenses": 0, "other": 0}
    jobs = 0
    for line in lines:
        head = line.key.split(":", 1)[0]
        if line.kind == "escrow.release" and line.amount > 0:
            sums["revenue"] += line.amount
            jobs += 1
        elif head in ("energy", "materials"):
            sums[head] -= line.amount
        elif head == "wear":
            sums["wear_reserve"] -= line.amount
        elif head == "split":
            sums["to_owners"] -= line.amount
        elif head == "expense":
            sums["expenses"] -= line.amount
        else:
            sums["other"] += line.amount
    net = sums["revenue"] - sums["energy"] - sums["materials"] - sums["wear_reserve"] - sums["expenses"]
    return {"period": period, "since": since.isoformat() if since else None, "jobs_paid": jobs,
            **{k: format_units(v) for k, v in sums.items()}, "net_after_costs": format_units(net),
            "micros": {**sums, "net_after_costs": net}}


def spent_today(deps: MachineDeps) -> int:
    """Expenses paid on the agent's own authority in the last 24 hours."""
    since = deps.clock.now() - timedelta(days=1)
    lines = _ledger(deps).statement(machine_wallet(deps.machine_id), limit=None, since=since)
    return -sum(line.amount for line in lines if line.key.startswith(EXPENSE_PREFIX) and line.amount < 0)


def pay_expense(deps: MachineDeps, amount: int, payee: str, memo: str) -> dict[str, Any]:
    """Pay ``amount`` micro-units from the machine's wallet to ``payee``, or raise ``PolicyRefused``.

    Above the per-expense or the 24-hour limit it opens an expense proposal and raises
    ``ApprovalRequired``; nothing is paid either way."""
    deps.hands_off()
    ledger = _ledger(deps)
    policy = deps.policy
    require_micros(amount, what="expense")
    memo = memo.strip()[:200]
    if payee not in policy.payees:
        raise PolicyRefused("policy.payee", f"{payee!r} is not an approved payee (approved: {', '.join(policy.payees) or 'none'})")
    why = ""
    if amount > policy.expense_limit:
        code, why = "policy.expense_limit", f"{format_units(amount)} is above the per-expense limit {format_units(policy.expense_limit)}"
    else:
        spent = spent_today(deps)
        if spent + amount > policy.expense_daily_limit:
            code, why = "policy.expense_daily", (f"{format_units(amount)} on top of {format_units(spent)} spent in 24 h is above "
                                                 f"the daily limit {format_units(policy.expense_daily_limit)}")
    if why:
        if deps.governance is None:
            raise PolicyRefused(code, why + "; no governance is configured to approve it")
        proposal = deps.governance.open(
            deps.machine_id, "expense", f"Pay {format_units(amount)} to {payee}: {memo or 'no memo'}",
            key=f"expense:{deps.machine_id}:{_digest(payee, amount, memo)}", opened_by=deps.cause,
            payload={"amount": amount, "payee": payee, "memo": memo}, evidence=[why],
        )
        raise ApprovalRequired(code, why, proposal.id)
    key = f"{EXPENSE_PREFIX}{deps.machine_id}:{deps.run_id}:{_digest(payee, amount, memo)}"
    try:
        posting = ledger.transfer(machine_wallet(deps.machine_id), payee, amount, key=key, memo=memo or "expense")
    except LedgerError as exc:
        raise PolicyRefused("wallet.refused", str(exc)) from None
    return {"paid": format_units(amount), "payee": payee, "posting": posting.id, "repeat": posting.replayed}


def _digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


wallet_tools = FunctionToolset[MachineDeps](id="wallet")


@wallet_tools.tool
def balance(ctx: RunContext[MachineDeps]) -> dict[str, str]:
    """The machine's wallet and its maintenance reserve, in units."""
    ledger = ctx.deps.ledger
    if ledger is None:
        return {"error": "no ledger configured"}
    mid = ctx.deps.machine_id
    ctx.deps.record("balance", True, "read")
    return {"wallet": format_units(ledger.balance(machine_wallet(mid))), "maintenance_reserve": format_units(ledger.balance(reserve(mid)))}


@wallet_tools.tool
def statement(ctx: RunContext[MachineDeps], limit: int = 20) -> list[dict[str, str]]:
    """The wallet's latest movements (at most 100), newest first: amount, what it was, when."""
    ledger = ctx.deps.ledger
    if ledger is None:
        return []
    lines = ledger.statement(machine_wallet(ctx.deps.machine_id), limit=max(1, min(limit, 100)))
    ctx.deps.record("statement", True, f"{len(lines)} lines")
    # a memo is its writer's words (a requester's job id and text, an expense's reason): fenced as data
    return [{"at": line.created_at.isoformat(), "amount": format_units(line.amount), "kind": line.kind,
             "memo": ctx.deps.outside(line.memo, "ledger memos")} for line in lines]


@wallet_tools.tool(name="earnings")
def earnings_tool(ctx: RunContext[MachineDeps], period: Period = "week") -> dict[str, Any]:
    """Revenue, energy, materials, wear reserve, expenses and owners' payouts over the last day, week, month or all time."""
    try:
        result = earnings(ctx.deps, period)
    except (InputError, PolicyRefused) as exc:
        return {"error": str(exc)}
    ctx.deps.record("earnings", True, period)
    return result


@wallet_tools.tool(name="pay_expense")
def pay_expense_tool(ctx: RunContext[MachineDeps], amount: str, payee: str, memo: str) -> dict[str, Any]:
    """Pay an expense in units (e.g. "12.50") to an approved payee. Above the holders' limits the
    payment is not made: a proposal asks them to approve it."""
    try:
        result = pay_expense(ctx.deps, parse_units(amount), payee, memo)
    except ApprovalRequired as exc:
        ctx.deps.record("pay_expense", False, str(exc), exc.code)
        return {"paid": False, "approval_required": True, "proposal": exc.proposal_id, "why": exc.detail}
    except (PolicyRefused, InputError) as exc:
        code = exc.code if isinstance(exc, PolicyRefused) else "input"
        ctx.deps.record("pay_expense", False, str(exc), code)
        return {"paid": False, "refused": code, "why": str(exc)}
    ctx.deps.record("pay_expense", True, f"{result['paid']} to {payee}")
    return result
