"""Running a contract as a job workflow (``agents.workflow``): its steps, its ticks, its handoffs' clocks.

A tick reads the machine and wakes the graph only when the reading matters (the job ended, failed,
or needs a person: the graph's ``monitor`` reads again and decides), so a routine reading costs no
checkpoint (a langgraph step costs ~5 ms, and the node's thread also answers calls with 30 ms bid
windows); a restarted simulator resumes from the last checkpointed reading. A handoff waits for an
operator (or escalates when nobody comes in the charter's time), and when the graph ends the
contract is done or given up (``JobEnds``). Everything but the graph's steps runs on the node's
mailbox thread; the steps run on the workflows' worker and act through ``JobEffects``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.node.book import Contract, ContractBook, ContractState
from agents.node.effects import JobEffects, JobEnds
from agents.node.holding import Holding
from agents.node.mandate import Mandate
from agents.node.outbox import Outbox
from agents.workflow import FlowState, FlowStatus, JobFlows, thread_id
from core.clock import Timeline
from core.mailbox import Mailbox
from ledger.operations import HandoffRecord, Operations
from machines.driver import Driver

__all__ = ["MIN_TICK_S", "FlowRun", "JobRunner"]

log = logging.getLogger("tamc.execution")

MIN_TICK_S = 0.001


@dataclass
class FlowRun:
    """Where one job's workflow stands, as the node sees it between steps."""

    thread: str
    waiting: Literal["tick", "operator"] | None = None
    """What the workflow waits for now."""
    handoff: str | None = None
    """The handoff the workflow waits on."""
    progress: float = 0.0
    reported: float = 0.0
    """The last progress step published."""
    stepping: bool = False
    """A workflow step is in flight on the workflows' thread."""
    signals: list[dict[str, Any]] = field(default_factory=list)
    """Signals for the workflow that came while a step was in flight, in order."""


class JobRunner:
    """The node's jobs as workflows: the graph's steps, its ticks, its handoffs' clocks."""

    def __init__(self, *, machine_id: str, clock: Timeline, mailbox: Mailbox, book: ContractBook, outbox: Outbox,
                 driver: Driver, flows: JobFlows, ops: Operations | None, mandate: Mandate, holding: Holding,
                 ends: JobEnds, confidence: Callable[[str], float | None], tick_s: float = 1.0, progress_steps: int = 4) -> None:
        self.machine_id = machine_id
        self.clock = clock
        self.mailbox = mailbox
        self.book = book
        self.outbox = outbox
        self.driver = driver
        self.flows = flows
        self.ops = ops
        self.holding = holding
        self.confidence = confidence
        self.tick_s = tick_s
        """Most real seconds (at the market's pace) between two readings of a job on a real machine;
        a simulator is read at each progress step and at its end."""
        self.progress_steps = progress_steps
        self.effects = JobEffects(machine_id=machine_id, clock=clock, mailbox=mailbox, book=book, outbox=outbox, driver=driver,
                                  ops=ops, mandate=mandate, holding=holding, ends=ends)
        self._runs: dict[str, FlowRun] = {}

    def flow(self, contract: Contract) -> FlowRun | None:
        """The contract's workflow, once it runs (a funded job still charging has none)."""
        return self._runs.get(contract.job.id)

    # -- the workshop's calls ---------------------------------------------------------------------

    def begin(self, contract: Contract, hours: float, expected_wear: float) -> None:
        contract.costing.expected_wear = expected_wear
        terms = contract.terms
        state: FlowState = {
            "job_id": terms.job.id, "machine_id": self.machine_id, "hours": hours, "expected_wear": expected_wear,
            "wear_at_start": contract.costing.wear_at_start, "confidence": self.confidence(terms.job.id),
            "contract": {"job": terms.job.model_dump(mode="json"), "requester": terms.requester, "price": terms.price,
                         "speed": terms.speed, "deadline_at": terms.deadline_at, "accept_by": terms.accept_by},
        }
        run = self._runs[terms.job.id] = FlowRun(thread_id(self.machine_id, terms.job.id))
        if self.ops is not None and self.flows.durable:
            self.ops.flow_opened(self.machine_id, terms.job.id, run.thread)
        self._submit(contract, run, lambda: self.flows.start(self.effects, state))

    def adopt(self, contract: Contract, thread: str, progress: float) -> FlowRun:
        """A workflow recovered after a restart, for ``contract``."""
        run = self._runs[contract.job.id] = FlowRun(thread, progress=progress)
        return run

    def resume(self, contract: Contract, signal: dict[str, Any]) -> None:
        """Wake the job's workflow with ``signal``, now or once the step in flight has landed."""
        run = self._runs.get(contract.job.id)
        if run is None:
            return  # its workflow has ended
        if run.stepping:
            run.signals.append(signal)
            return
        if run.waiting == "operator" and ("takeover" in signal or "tick" in signal):
            return  # stopped for a person already: the operator attaches to its handoff
        self._submit(contract, run, lambda: self.flows.resume(self.effects, run.thread, signal))

    def proceed(self, contract: Contract, run: FlowRun) -> None:
        """Take the next step of a workflow that stopped between two (its process died)."""
        self._submit(contract, run, lambda: self.flows.proceed(self.effects, run.thread))

    def _submit(self, contract: Contract, run: FlowRun, call: Callable[[], FlowStatus]) -> None:
        """Run a graph step on the workflows' worker thread, never on the node's: a step costs 5-20 ms
        and the node's thread answers calls for proposals with tens of milliseconds to spare. The
        graph's effects come back to the node's thread; its result too (``_landed``)."""
        run.stepping = True

        def work() -> None:
            try:
                status: FlowStatus | None = call()
            except Exception:
                log.exception("machine=%s job=%s workflow step failed", self.machine_id, contract.job.id)
                status = None
            self.mailbox.post(self._landed, contract, run, status)

        (self.flows.worker or self.mailbox).post(work)

    def _landed(self, contract: Contract, run: FlowRun, status: FlowStatus | None) -> None:
        run.stepping = False
        if status is not None:
            self.step(contract, status)
        if run.signals and not run.stepping and run.waiting is not None:
            self.resume(contract, run.signals.pop(0))

    def step(self, contract: Contract, status: FlowStatus) -> None:
        """Act on where the workflow now waits: schedule the next tick, wait for an operator, or end."""
        run = self._runs.get(contract.job.id)
        if run is None:
            return
        left = run.handoff
        run.waiting = status.waiting
        if status.waiting != "operator":
            run.handoff = None
            if left is not None:  # the workflow moved on from a handoff: it is closed, with the decision taken
                self._close_handoff(left, str(status.values.get("decision") or status.outcome or "closed"))
        run.progress = float(status.values.get("progress", run.progress))
        self._progress_event(contract, run)
        if status.waiting == "tick":
            contract.timers.slot("tick", self.mailbox.call_later(self._next_tick(contract, run), self.tick, contract))
        elif status.waiting == "operator":
            handoff = status.values.get("handoff") or {}
            run.handoff = handoff.get("handoff_id")
            record = self._record(run.handoff)
            if record is not None and record.state == "pending" and self.holding.held_by is not None:
                self.holding.attach(record)  # an operator took the machine while the job was being stopped for them
            elif record is not None and record.state == "pending":
                wait = max((record.wait_until - self.clock.now()).total_seconds(), 0.0)
                contract.timers.add(self.mailbox.call_later(wait, self._escalate, contract, record.id))
        else:
            self._ended(contract, run, status.outcome or "failed")

    def tick(self, contract: Contract) -> None:
        run = self._runs.get(contract.job.id)
        if run is None or run.waiting != "tick" or contract.state != ContractState.RUNNING or run.stepping:
            return
        reading, progress, concern = self.effects.reading(contract.job, wear_at_start=contract.costing.wear_at_start,
                                                          expected_wear=contract.costing.expected_wear, progress=run.progress)
        if reading == "running" and concern is None:  # a routine reading: no need to wake the workflow (no checkpoint)
            run.progress = progress
            self._progress_event(contract, run)
            contract.timers.slot("tick", self.mailbox.call_later(self._next_tick(contract, run), self.tick, contract))
            return
        self.resume(contract, {"tick": True})  # the end, a failure or a concern: the workflow reads and decides

    def closed(self, contract: Contract, outcome: str) -> None:
        """The requester closed the job (paid, refunded, expired) while its workflow still ran."""
        run = self._runs.get(contract.job.id)
        if run is None or (run.waiting is None and not run.stepping):
            return
        if run.handoff is not None:
            self._close_handoff(run.handoff, f"closed: {outcome}")
        self.resume(contract, {"closed": outcome})

    # -- helpers -------------------------------------------------------------------------------

    def _close_handoff(self, handoff_id: str, decision: str) -> None:
        running = self.book.running
        run = self._runs.get(running.job.id) if running is not None else None
        self.holding.close(handoff_id, decision, free=running is None or (run is not None and run.handoff == handoff_id))

    def _ended(self, contract: Contract, run: FlowRun, outcome: str) -> None:
        run.waiting = None
        self._runs.pop(contract.job.id, None)
        if contract.state == ContractState.CANCELLED:  # the requester closed it meanwhile: nothing to book
            outcome = "closed"
        if self.ops is not None and self.flows.durable:
            self.ops.flow_closed(run.thread)
        if contract.state == ContractState.RUNNING:  # ``finish`` did not find it to book (it should have)
            if outcome == "done":
                self.effects.ends.done(contract)
            elif outcome != "closed":
                self.effects.ends.given_up(contract)

    def _next_tick(self, contract: Contract, run: FlowRun) -> float:
        tick = self.tick_s * self.clock.speed
        if not self.driver.paced_by_clock:
            return tick  # a real machine says when it is done: read it every tick
        hours = contract.costing.hours
        left = hours * (1 - run.progress) * 3600
        step = hours * 3600 / max(self.progress_steps, 1)
        return max(min(tick, step, left), MIN_TICK_S) if left > 0 else MIN_TICK_S

    def _progress_event(self, contract: Contract, run: FlowRun) -> None:
        steps = max(self.progress_steps, 1)
        reached = int(run.progress * steps + 1e-9) / steps
        if run.waiting == "tick" and 0 < reached < 1 and reached > run.reported:
            run.reported = reached
            self.outbox.event(contract.job.id, "progress", progress=reached)

    def _record(self, handoff_id: str | None) -> HandoffRecord | None:
        if handoff_id is None or self.ops is None:
            return None
        try:
            return self.ops.handoff(handoff_id)
        except Exception:
            return None

    def _escalate(self, contract: Contract, handoff_id: str) -> None:
        """Nobody took the handoff in the charter's time: stay safe, give the job up to the runner-up."""
        run = self._runs.get(contract.job.id)
        if run is None or run.waiting != "operator" or run.handoff != handoff_id:
            return
        record = self._record(handoff_id)
        if record is None or record.state != "pending":
            return
        log.warning("machine=%s job=%s handoff=%s escalated: no operator took over", self.machine_id, contract.job.id, handoff_id)
        self._close_handoff(handoff_id, "escalate")
        self.resume(contract, {"decision": "escalate"})
