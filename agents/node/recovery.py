"""Picking up a machine's open workflows after a restart.

The node finds its open workflows in the ledger's index and takes each up where its checkpoint
stands: a job waiting for a tick ticks again, a pending handoff waits again with the time it had
left, a job paid or closed while the machine was down is settled or ended, and nothing already done
(started, paid, bid, commanded) is done twice.
"""

from __future__ import annotations

import logging

from agents.node.book import Contract, ContractBook, ContractState, Costing, Followed, Terms
from agents.node.holding import Holding
from agents.node.outbox import Inbox
from agents.node.workshop import Workshop
from agents.workflow import FlowStatus, JobFlows
from core.errors import EscrowNotFound
from hub import topics
from ledger import Ledger
from ledger.operations import HandoffRecord, Operations
from machines.job import JobSpec
from machines.work import estimate
from pricing.bids import OpenCall
from pricing.rules import job_cost

__all__ = ["recover"]

log = logging.getLogger("tamc.execution")


def recover(*, machine_id: str, ops: Operations | None, flows: JobFlows, ledger: Ledger | None, book: ContractBook,
            inbox: Inbox, holding: Holding, workshop: Workshop) -> None:
    """Pick up ``machine_id``'s open workflows (only durable ones outlive their process)."""
    if ops is None or not flows.durable:
        return
    for tid in ops.open_flows(machine_id):
        status = flows.status(tid)
        if status is None or status.ended:
            ops.flow_closed(tid)
            continue
        try:
            _recover(tid, status, machine_id=machine_id, ops=ops, ledger=ledger, book=book, inbox=inbox, holding=holding,
                     workshop=workshop)
        except Exception:
            log.exception("machine=%s workflow=%s could not be recovered", machine_id, tid)


def _recover(tid: str, status: FlowStatus, *, machine_id: str, ops: Operations, ledger: Ledger | None, book: ContractBook,
             inbox: Inbox, holding: Holding, workshop: Workshop) -> None:
    runner = workshop.runner
    profile = workshop.mandate.profile
    values = status.values
    c = values["contract"]
    job = JobSpec.model_validate(c["job"])
    terms = Terms(job=job, requester=c["requester"], price=c["price"], speed=c["speed"], deadline_at=c["deadline_at"],
                  accept_by=c["accept_by"])
    costing = Costing(hours=values.get("hours", 0.0), cost=job_cost(profile, estimate(profile, job), workshop.market),
                      wear_at_start=values.get("wear_at_start", 0.0), expected_wear=float(values.get("expected_wear", 0.0)))
    contract = Contract(terms, state=ContractState.RUNNING, costing=costing)
    run = runner.adopt(contract, tid, float(values.get("progress", 0.0)))
    call = OpenCall(job=job, requester=c["requester"], reserve=c["price"], bid_deadline=0, deadline_at=c["deadline_at"],
                    speed=c["speed"])
    book.follow(Followed(call, c["requester"], contract))
    inbox.listen(topics.award(job.id))
    inbox.listen(topics.events(job.id))
    book.run(contract)
    if values.get("started"):
        route = [p for p in (job.pickup, job.dropoff) if p is not None]
        workshop.driver.recover(job.id, costing.hours, run.progress, paused=status.waiting == "operator", route=route)
    log.info("machine=%s job=%s workflow recovered, waiting for %s", machine_id, job.id, status.waiting or "its next step")
    if status.waiting is None:  # the process died between two steps: take the next one now
        runner.proceed(contract, run)
        return
    if status.waiting == "operator":
        record = _handoff(ops, (values.get("handoff") or {}).get("handoff_id"))
        if record is not None and record.state == "taken" and record.operator:
            holding.take(record.operator, record.taken_at)
    runner.step(contract, status)
    escrow = _escrow_state(ledger, job.id)
    if escrow == "released" and contract.state == ContractState.DONE:  # paid while we were down: settle (once, by its keys)
        workshop.settle(contract)
    elif escrow not in (None, "held") and run.waiting is not None:  # the requester closed it while we were down
        log.info("machine=%s job=%s was %s while the machine was down; its workflow ends", machine_id, job.id, escrow)
        runner.closed(contract, escrow)
        contract.move(ContractState.CANCELLED)
        workshop.stop_running(contract)


def _handoff(ops: Operations, handoff_id: str | None) -> HandoffRecord | None:
    if handoff_id is None:
        return None
    try:
        return ops.handoff(handoff_id)
    except Exception:
        return None


def _escrow_state(ledger: Ledger | None, job_id: str) -> str | None:
    if ledger is None:
        return None
    try:
        return ledger.escrow(job_id).state.value
    except EscrowNotFound:
        return None
