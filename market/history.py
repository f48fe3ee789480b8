"""The history of a market run under faults, and the checker that reads it with the ledger.

In the style of Jepsen: every process's operations are recorded with the time they were seen
(machines' job events, the requester's endings, the harness's own kills and restarts), and after the
run one pass over the whole history and the ledger says whether the market kept its promises:

- every job posted ended exactly once (paid, refunded or expired);
- no job was held by two machines at once (a machine starts a job only once the one before it let
  it go: failed, aborted, released, or its process died);
- no payment without a ``done``: each release went to a machine that said ``done`` for that job;
- no job paid twice: at most one payment into machine wallets per job;
- every escrow closed, or held with an expiry (a requester that never came back strands nothing);
- the ledger's audit is clean (every posting balances, every balance is its entries' sum).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ledger import Ledger
from ledger.models import machine_wallet

__all__ = ["Op", "Verdict", "check", "load"]

LET_GO = frozenset({"failed", "aborted", "released", "declined"})
HOLDING = frozenset({"started", "progress", "resumed", "done", "handoff", "kept"})


class Op(BaseModel):
    """One recorded operation: who (a process), what, when (seconds since the run began)."""

    t: float
    process: str
    kind: Literal["event", "ended", "fault", "posted"]
    job: str | None = None
    machine: str | None = None
    what: str = ""
    """The event's kind (started, done…), the ending (paid, refunded, expired), the fault (kill, restart…)."""
    detail: dict[str, Any] = Field(default_factory=dict)


class Verdict(BaseModel):
    ok: bool
    violations: list[str]
    jobs: int
    endings: dict[str, int]
    faults: dict[str, int]


def load(path: Path) -> list[Op]:
    return [Op.model_validate_json(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def check(history: list[Op], ledger: Ledger, posted: list[str]) -> Verdict:
    """Read the whole ``history`` and the ledger; ``posted`` are the job ids the requester was given."""
    bad: list[str] = []
    ends: dict[str, list[str]] = defaultdict(list)
    for op in history:
        if op.kind == "ended" and op.job:
            ends[op.job].append(op.what)
    for job in posted:
        if len(ends.get(job, [])) != 1:
            bad.append(f"job {job} ended {len(ends.get(job, []))} times: {ends.get(job, [])}")
    for job in set(ends) - set(posted):
        bad.append(f"job {job} ended but was never posted")
    bad += _held_once(history)
    bad += _paid_for_done(history, ledger, posted)
    for account in ledger.accounts():
        if account.id.startswith("escrow:"):
            escrow = ledger.escrow(account.id.removeprefix("escrow:"))
            if escrow.state.value == "held" and escrow.expires_at is None:
                bad.append(f"escrow of {escrow.job_id} is held with no expiry")
    bad += [f"ledger audit: {line}" for line in ledger.audit()]
    endings: dict[str, int] = defaultdict(int)
    for job in posted:
        for what in ends.get(job, [])[:1]:
            endings[what] += 1
    faults: dict[str, int] = defaultdict(int)
    for op in history:
        if op.kind == "fault":  # "kill broker", "cut network", "restart machine"…
            faults[f"{op.what} {'machine' if op.machine else op.detail.get('target', '?')}"] += 1
    return Verdict(ok=not bad, violations=bad, jobs=len(posted), endings=dict(endings), faults=dict(faults))


def _held_once(history: list[Op]) -> list[str]:
    """A job's holder changes only when the one before let it go (said so, or its process died)."""
    holder: dict[str, str] = {}
    bad = []
    for op in history:
        if op.kind == "fault" and op.what == "kill" and op.machine:
            for job, m in list(holder.items()):
                if m == op.machine:
                    del holder[job]  # its process died: the job is free for another (and its own recovery must not go on)
        if op.kind != "event" or op.job is None or op.machine is None:
            continue
        if op.what in HOLDING:
            current = holder.get(op.job)
            if current is not None and current != op.machine:
                bad.append(f"job {op.job}: {op.machine} said {op.what} at {op.t:.2f} s while {current} held it")
            holder[op.job] = op.machine
        elif op.what in LET_GO and holder.get(op.job) == op.machine:
            del holder[op.job]
    return bad


def _paid_for_done(history: list[Op], ledger: Ledger, posted: list[str]) -> list[str]:
    said_done = {(op.job, op.machine) for op in history if op.kind == "event" and op.what == "done"}
    bad = []
    wallets = {a.id for a in ledger.accounts() if a.id.startswith(machine_wallet(""))}
    for job in posted:
        key = f"release:{job}"
        payments = [(p.key, leg.account) for p in ledger.postings(key) if p.key == key or p.key.startswith(f"{key}:")
                    for leg in p.legs if leg.account in wallets and leg.amount > 0]
        if len(payments) > 1:
            bad.append(f"job {job} paid {len(payments)} times: {payments}")
        for _, wallet in payments:
            machine = wallet.removeprefix(machine_wallet(""))
            if (job, machine) not in said_done:
                bad.append(f"job {job} paid to {machine}, which never said done")
    return bad


def record(out: Any, op: Op) -> None:
    """Append ``op`` to an open history file, a line each."""
    out.write(json.dumps(op.model_dump(mode="json")) + "\n")
