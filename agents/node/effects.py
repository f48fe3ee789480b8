"""What a job's workflow does to the machine: the ``JobPort`` its graph calls.

Each method is called on the workflows' worker and carried out on the node's mailbox thread (the
node's state is touched by that thread alone); each is idempotent, because langgraph re-runs an
interrupted step from its start. When the graph finishes a job, ``JobEnds`` books it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from agents.handoff import Concern, before_start, during_job
from agents.node.book import Contract, ContractBook, ContractState
from agents.node.holding import Holding
from agents.node.mandate import Mandate
from agents.node.outbox import Outbox
from agents.workflow import FlowState, Outcome, Run
from core.clock import Timeline
from core.errors import CommandRejected, DriverError
from core.mailbox import Mailbox
from ledger.operations import HandoffRecord, Operations
from machines.driver import Driver
from machines.job import JobSpec

__all__ = ["JobEffects", "JobEnds"]

log = logging.getLogger("tamc.execution")
T = TypeVar("T")


@dataclass(frozen=True)
class JobEnds:
    """How the machine books the end of a job's workflow (the workshop's answers)."""

    done: Callable[[Contract], None]
    """Finished: book it, start the next job."""
    given_up: Callable[[Contract], None]
    """Ended unfinished (failed, escalated, aborted by an operator)."""
    stop: Callable[[Contract], None]
    """Stop it on the machine and free the machine (the requester closed it)."""
    settle: Callable[[Contract], None]
    """Paid: settle its costs and pay the holders."""


class JobEffects:
    def __init__(self, *, machine_id: str, clock: Timeline, mailbox: Mailbox, book: ContractBook, outbox: Outbox,
                 driver: Driver, ops: Operations | None, mandate: Mandate, holding: Holding, ends: JobEnds) -> None:
        self.machine_id = machine_id
        self.clock = clock
        self.mailbox = mailbox
        self.book = book
        self.outbox = outbox
        self.driver = driver
        self.ops = ops
        self.mandate = mandate
        self.holding = holding
        self.ends = ends

    # -- JobPort: on the workflows' worker; each effect runs on the node's thread ---------------------

    def _on_node(self, fn: Callable[..., T], *args: Any) -> T:
        return self.mailbox.call(fn, *args, timeout=60.0)

    def check_start(self, state: FlowState) -> Concern | None:
        return self._on_node(self._check_start, state)

    def start(self, state: FlowState) -> dict[str, Any]:
        return self._on_node(self._start, state)

    def read(self, state: FlowState) -> tuple[Run, float, Concern | None]:
        return self._on_node(self._read, state)

    def safe_state(self, state: FlowState) -> None:
        self._on_node(self._safe_state, state)

    def raise_handoff(self, state: FlowState, concern: Concern, handoff_id: str) -> dict[str, Any]:
        return self._on_node(self._raise_handoff, state, concern, handoff_id)

    def carry_on(self, state: FlowState) -> None:
        self._on_node(self._carry_on, state)

    def finish(self, state: FlowState, outcome: Outcome) -> None:
        self._on_node(self._finish, state, outcome)

    # -- the effects, on the node's thread ---------------------------------------------------------

    def current(self, job_id: str) -> Contract | None:
        """The job's contract if the machine is on it now (not closed, given up or done meanwhile)."""
        contract = self.book.contract(job_id)
        return contract if contract is not None and contract.state == ContractState.RUNNING and self.book.running is contract else None

    def reading(self, job: JobSpec, *, wear_at_start: float, expected_wear: float, progress: float) -> tuple[Run, float, Concern | None]:
        """Read the machine: where the job stands, how far it is, and whether anything needs a person."""
        run: Run = self.driver.job_run(job.id)
        reading = self.driver.telemetry()
        progress = reading.progress if reading.job_id == job.id else (1.0 if run == "done" else progress)
        if run == "running" and progress >= 1 - 1e-6:
            self.driver.finish_job()  # the node's timer says the job is done (a simulator books the rest)
            run = self.driver.job_run(job.id)
        if run == "done":
            return run, 1.0, None
        km_left = 0.0
        if job.pickup is not None and job.dropoff is not None and reading.position is not None:
            km_left = reading.position.distance_to(job.dropoff) if progress > 0 else reading.position.distance_to(job.pickup) + job.pickup.distance_to(job.dropoff)
        concern = None
        if run in ("running", "paused"):
            concern = during_job(self.mandate.profile, reading, wear_at_start=wear_at_start, expected_wear=expected_wear, km_left=km_left)
        return run, progress, concern

    def _check_start(self, state: FlowState) -> Concern | None:
        c = state["contract"]
        job = JobSpec.model_validate(c["job"])
        return before_start(self.mandate.profile, job, price=c["price"], hours=state.get("hours", 0.0), charter=self.mandate.charter,
                            confidence=state.get("confidence"))

    def _start(self, state: FlowState) -> dict[str, Any]:
        job_id = state["job_id"]
        job = JobSpec.model_validate(state["contract"]["job"])
        if self.current(job_id) is None:
            return {}  # closed or given up while this step waited its turn: the machine is not the job's any more
        if self.driver.job_run(job_id) not in ("running", "paused"):
            route = [p for p in (job.pickup, job.dropoff) if p is not None]
            self.driver.start_job(job_id, max(state.get("hours", 0.0), 1e-9), route=route)
            self.outbox.event(job_id, "started")
        self.outbox.telemetry(self.driver.telemetry())
        return {}

    def _read(self, state: FlowState) -> tuple[Run, float, Concern | None]:
        return self.reading(JobSpec.model_validate(state["contract"]["job"]), wear_at_start=state.get("wear_at_start", 0.0),
                            expected_wear=state.get("expected_wear", 0.0), progress=state.get("progress", 0.0))

    def _safe_state(self, state: FlowState) -> None:
        """Pause the machine (a vehicle pulls over); one already paused or stopped stays as it is."""
        if self.driver.job_run(state["job_id"]) == "running":
            try:
                self.driver.pause()
            except (CommandRejected, DriverError) as exc:
                log.error("machine=%s job=%s cannot reach a safe state: %s", self.machine_id, state["job_id"], exc)
        self.outbox.telemetry(self.driver.telemetry())

    def _raise_handoff(self, state: FlowState, concern: Concern, handoff_id: str) -> dict[str, Any]:
        now = self.clock.now()
        wait_h = self.mandate.charter.handoff_wait_h
        record = HandoffRecord(id=handoff_id, machine_id=self.machine_id, job_id=state["job_id"], reason=concern.reason,
                               detail=concern.detail, proposal=concern.proposal,
                               context={**concern.context, "job": state["contract"]["job"], "price": state["contract"]["price"]},
                               state="pending", raised_at=now, wait_until=now + timedelta(hours=wait_h))
        new = True
        if self.ops is not None:
            record, new = self.ops.raise_handoff(record)
        if new:  # first the requester hears the job is held (it keeps the contract if we drop out), then the console
            self.outbox.event(state["job_id"], "handoff", progress=min(state.get("progress", 0.0), 1.0),
                              detail=f"{concern.reason}: {concern.detail}")
        self.holding.publish(record)  # retained: the newest state of the handoff, repeating it is harmless
        log.warning("machine=%s job=%s handoff=%s reason=%s detail=%s", self.machine_id, state["job_id"], handoff_id, concern.reason,
                    concern.detail)
        return {"handoff_id": record.id, "reason": record.reason, "detail": record.detail}

    def _carry_on(self, state: FlowState) -> None:
        if self.current(state["job_id"]) is None:
            return
        if self.driver.job_run(state["job_id"]) == "paused":
            try:
                self.driver.resume()
            except CommandRejected as exc:
                log.warning("machine=%s job=%s resume refused: %s", self.machine_id, state["job_id"], exc)
        self.outbox.event(state["job_id"], "resumed", progress=min(state.get("progress", 0.0), 1.0))

    def _finish(self, state: FlowState, outcome: Outcome) -> None:
        driver = self.driver
        job_id = state["job_id"]
        run = driver.job_run(job_id)
        contract = self.current(job_id)
        if outcome == "done":
            if run in ("running", "paused"):
                driver.finish_job()  # an operator says it is done: the simulator books the rest
            if contract is not None:
                self.ends.done(contract)  # booked before 'done' goes out: the 'paid' answer finds it done
            self.outbox.event(job_id, "done", progress=1.0)
            return
        if run in ("running", "paused"):
            try:
                driver.cancel()
            except (CommandRejected, DriverError) as exc:
                log.error("machine=%s job=%s cannot cancel the job on the machine: %s", self.machine_id, job_id, exc)
        if outcome == "closed":
            return
        if contract is not None:
            self.ends.given_up(contract)
        if outcome == "aborted":
            self.outbox.event(job_id, "aborted", detail=f"an operator aborted the job ({state.get('decision')}); refund it")
        elif outcome == "escalated":
            self.outbox.event(job_id, "failed", detail="escalated: no operator took over in time; the runner-up may take it")
        elif outcome == "failed":
            self.outbox.event(job_id, "failed", detail=f"the job was {state.get('run', 'stopped')} on the machine")
