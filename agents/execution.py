"""Running a contract: the machine node's side of the job workflow (``agents.workflow``).

``JobRunner`` is the ``JobPort`` the graph calls, and the clock that wakes it: a tick reads the
machine and wakes the graph only when the reading matters (the job ended, failed, or needs a
person: the graph's ``monitor`` reads again and decides), so a routine reading costs no checkpoint
(a langgraph step costs ~5 ms, and the node's thread also answers calls with 30 ms bid windows);
a restarted simulator resumes from the last checkpointed reading. A handoff waits for an operator
(or escalates when nobody comes in the charter's time), and when the graph ends the contract is
done or given up. Everything runs on the node's mailbox thread.

On start it finds the node's open workflows in the ledger's index and picks each up where its
checkpoint stands: a job waiting for a tick ticks again, a pending handoff waits again with the time
it had left, and nothing already done (started, paid, bid, commanded) is done twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from agents.handoff import Concern, before_start, during_job
from agents.workflow import FlowState, FlowStatus, Outcome, Run, thread_id
from core.errors import CommandRejected, DriverError, EscrowNotFound
from hub import topics
from ledger.operations import HandoffRecord
from machines.driver import SimDriver
from machines.job import JobSpec

if TYPE_CHECKING:
    from agents.node import Contract, MachineNode

__all__ = ["JobRunner"]

log = logging.getLogger("tamc.execution")
T = TypeVar("T")

MIN_TICK_S = 0.001


class JobRunner:
    """The node's jobs as workflows: the graph's effects, its ticks, its handoffs' clocks."""

    def __init__(self, node: MachineNode, *, tick_s: float = 1.0) -> None:
        self.node = node
        self.tick_s = tick_s
        """Most real seconds (at the market's pace) between two readings of a job on a real machine;
        a simulator is read at each progress step and at its end."""

    # -- the node's calls ------------------------------------------------------------------------

    def begin(self, contract: Contract, hours: float, expected_wear: float) -> None:
        node = self.node
        contract.expected_wear = expected_wear
        record = node._records.get(contract.job.id)
        state: FlowState = {
            "job_id": contract.job.id, "machine_id": node.id, "hours": hours, "expected_wear": expected_wear,
            "wear_at_start": contract.wear_at_start, "confidence": record.confidence if record else None,
            "contract": {"job": contract.job.model_dump(mode="json"), "requester": contract.requester, "price": contract.price,
                         "speed": contract.speed, "deadline_at": contract.deadline_at, "accept_by": contract.accept_by},
        }
        contract.flow = thread_id(node.id, contract.job.id)
        if node.operations is not None and node.flows.durable:
            node.operations.flow_opened(node.id, contract.job.id, contract.flow)
        self._submit(contract, lambda: node.flows.start(self, state))

    def resume(self, contract: Contract, signal: dict[str, Any]) -> None:
        """Wake the job's workflow with ``signal``, now or once the step in flight has landed."""
        if contract.stepping:
            contract.signals.append(signal)
            return
        if contract.waiting == "operator" and ("takeover" in signal or "tick" in signal):
            return  # stopped for a person already: the operator attaches to its handoff
        tid = contract.flow
        assert tid is not None
        self._submit(contract, lambda: self.node.flows.resume(self, tid, signal))

    def _submit(self, contract: Contract, call: Callable[[], FlowStatus]) -> None:
        """Run a graph step on the workflows' worker thread, never on the node's: a step costs 5-20 ms
        and the node's thread answers calls for proposals with tens of milliseconds to spare. The
        graph's effects come back to the node's thread (``_on_node``); its result too (``_landed``)."""
        node = self.node
        contract.stepping = True

        def work() -> None:
            try:
                status: FlowStatus | None = call()
            except Exception:
                log.exception("machine=%s job=%s workflow step failed", node.id, contract.job.id)
                status = None
            node.mailbox.post(self._landed, contract, status)

        (node.flows.worker or node.mailbox).post(work)

    def _landed(self, contract: Contract, status: FlowStatus | None) -> None:
        contract.stepping = False
        if status is not None:
            self.step(contract, status)
        if contract.signals and not contract.stepping and contract.waiting is not None:
            self.resume(contract, contract.signals.pop(0))

    def step(self, contract: Contract, status: FlowStatus) -> None:
        """Act on where the workflow now waits: schedule the next tick, wait for an operator, or end."""
        node = self.node
        left = contract.handoff
        contract.waiting = status.waiting
        if status.waiting != "operator":
            contract.handoff = None
            if left is not None:  # the workflow moved on from a handoff: it is closed, with the decision taken
                node.control.close_handoff(left, str(status.values.get("decision") or status.outcome or "closed"))
        contract.progress = float(status.values.get("progress", contract.progress))
        self._progress_event(contract)
        if status.waiting == "tick":
            if contract.tick is not None:
                contract.tick.cancel()
            contract.tick = node.mailbox.call_later(self._next_tick(contract), self.tick, contract)
        elif status.waiting == "operator":
            handoff = status.values.get("handoff") or {}
            contract.handoff = handoff.get("handoff_id")
            record = self._record(contract.handoff)
            if record is not None and record.state == "pending" and node.control.held_by is not None:
                node.control.attach(record)  # an operator took the machine while the job was being stopped for them
            elif record is not None and record.state == "pending":
                wait = max((record.wait_until - node.clock.now()).total_seconds(), 0.0)
                contract.timers.append(node.mailbox.call_later(wait, self._escalate, contract, record.id))
        else:
            self._ended(contract, status.outcome or "failed")

    def tick(self, contract: Contract) -> None:
        if contract.waiting != "tick" or contract.state != "running" or contract.stepping:
            return
        node = self.node
        if isinstance(node.driver, SimDriver):  # simulation aids: faults injected on purpose
            progress = node.driver.telemetry().progress if node.driver.job_run(contract.job.id) == "running" else 0.0
            fault = node.anomalies.get(contract.job.id)
            if fault and progress >= fault[0] and contract.job.id not in node.injected:
                node.injected.add(contract.job.id)
                node.driver.inject(fault[1])
            if contract.job.id in node.fail_jobs and progress >= 0.5:
                node.driver.fault()
        run, progress, concern = self._reading(contract.job, wear_at_start=contract.wear_at_start,
                                               expected_wear=contract.expected_wear, progress=contract.progress)
        if run == "running" and concern is None:  # a routine reading: no need to wake the workflow (no checkpoint)
            contract.progress = progress
            self._progress_event(contract)
            contract.tick = node.mailbox.call_later(self._next_tick(contract), self.tick, contract)
            return
        self.resume(contract, {"tick": True})  # the end, a failure or a concern: the workflow reads and decides

    def closed(self, contract: Contract, outcome: str) -> None:
        """The requester closed the job (paid, refunded, expired) while its workflow still ran."""
        if contract.flow is None or (contract.waiting is None and not contract.stepping):
            return
        if contract.handoff is not None:
            node = self.node
            node.control.close_handoff(contract.handoff, f"closed: {outcome}")
        self.resume(contract, {"closed": outcome})

    def recover(self) -> None:
        """Pick up this machine's open workflows after a restart."""
        node = self.node
        if node.operations is None or not node.flows.durable:
            return
        for tid in node.operations.open_flows(node.id):
            status = node.flows.status(tid)
            if status is None or status.ended:
                node.operations.flow_closed(tid)
                continue
            try:
                self._recover(tid, status)
            except Exception:
                log.exception("machine=%s workflow=%s could not be recovered", node.id, tid)

    def _recover(self, tid: str, status: FlowStatus) -> None:
        from agents.node import Contract, Followed
        from pricing.bids import OpenCall

        node = self.node
        values = status.values
        c = values["contract"]
        job = JobSpec.model_validate(c["job"])
        contract = Contract(job=job, requester=c["requester"], price=c["price"], speed=c["speed"], deadline_at=c["deadline_at"],
                            accept_by=c["accept_by"], state="running", hours=values.get("hours", 0.0),
                            wear_at_start=values.get("wear_at_start", 0.0), flow=tid)
        contract.cost = node._job_cost(job)
        contract.progress = float(values.get("progress", 0.0))
        contract.expected_wear = float(values.get("expected_wear", 0.0))
        call = OpenCall(job=job, requester=c["requester"], reserve=c["price"], bid_deadline=0, deadline_at=c["deadline_at"],
                        speed=c["speed"])
        node._jobs[job.id] = Followed(call, c["requester"], contract)
        node.hub.subscribe(topics.award(job.id), node._deliver)
        node.hub.subscribe(topics.events(job.id), node._deliver)
        node._running = contract
        if isinstance(node.driver, SimDriver) and values.get("started"):
            route = [p for p in (job.pickup, job.dropoff) if p is not None]
            node.driver.recover(job.id, contract.hours, contract.progress, paused=status.waiting == "operator", route=route)
        log.info("machine=%s job=%s workflow recovered, waiting for %s", node.id, job.id, status.waiting or "its next step")
        if status.waiting is None:  # the process died between two steps: take the next one now
            self._submit(contract, lambda: node.flows.proceed(self, tid))
            return
        if status.waiting == "operator":
            record = self._record((status.values.get("handoff") or {}).get("handoff_id"))
            if record is not None and record.state == "taken" and record.operator:
                node.control.held_by, node.control.held_since = record.operator, record.taken_at
        self.step(contract, status)
        escrow = self._escrow_state(job.id)
        if escrow == "released" and contract.state == "done":  # paid while we were down: settle (once, by its keys)
            node._settle(contract)
        elif escrow not in (None, "held") and contract.waiting is not None:  # the requester closed it while we were down
            log.info("machine=%s job=%s was %s while the machine was down; its workflow ends", node.id, job.id, escrow)
            self.closed(contract, escrow)
            contract.state = "cancelled"
            node._stop_running(contract)

    def _escrow_state(self, job_id: str) -> str | None:
        ledger = self.node.ledger
        if ledger is None:
            return None
        try:
            return ledger.escrow(job_id).state.value
        except EscrowNotFound:
            return None

    # -- JobPort: what the graph asks (on the workflows' worker; each effect runs on the node's thread) --

    def _on_node(self, fn: Callable[..., T], *args: Any) -> T:
        return self.node.mailbox.call(fn, *args, timeout=60.0)

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

    def _check_start(self, state: FlowState) -> Concern | None:
        node = self.node
        c = state["contract"]
        job = JobSpec.model_validate(c["job"])
        return before_start(node.profile, job, price=c["price"], hours=state.get("hours", 0.0), charter=node.charter(),
                            confidence=state.get("confidence"))

    def _start(self, state: FlowState) -> dict[str, Any]:
        node = self.node
        assert node.driver is not None
        job_id = state["job_id"]
        job = JobSpec.model_validate(state["contract"]["job"])
        if self._current(job_id) is None:
            return {}  # closed or given up while this step waited its turn: the machine is not the job's any more
        if node.driver.job_run(job_id) not in ("running", "paused"):
            route = [p for p in (job.pickup, job.dropoff) if p is not None]
            node.driver.start_job(job_id, max(state.get("hours", 0.0), 1e-9), route=route)
            node._publish_event(job_id, "started")
        node._publish_telemetry()
        return {}

    def _read(self, state: FlowState) -> tuple[Run, float, Concern | None]:
        return self._reading(JobSpec.model_validate(state["contract"]["job"]), wear_at_start=state.get("wear_at_start", 0.0),
                             expected_wear=state.get("expected_wear", 0.0), progress=state.get("progress", 0.0))

    def _reading(self, job: JobSpec, *, wear_at_start: float, expected_wear: float, progress: float) -> tuple[Run, float, Concern | None]:
        """Read the machine: where the job stands, how far it is, and whether anything needs a person."""
        node = self.node
        assert node.driver is not None
        run: Run = node.driver.job_run(job.id)
        reading = node.driver.telemetry()
        progress = reading.progress if reading.job_id == job.id else (1.0 if run == "done" else progress)
        if run == "running" and progress >= 1 - 1e-6:
            node.driver.finish_job()  # the node's timer says the job is done (a simulator books the rest)
            run = node.driver.job_run(job.id)
        if run == "done":
            return run, 1.0, None
        km_left = 0.0
        if job.pickup is not None and job.dropoff is not None and reading.position is not None:
            km_left = reading.position.distance_to(job.dropoff) if progress > 0 else reading.position.distance_to(job.pickup) + job.pickup.distance_to(job.dropoff)
        concern = None
        if run in ("running", "paused"):
            concern = during_job(node.profile, reading, wear_at_start=wear_at_start, expected_wear=expected_wear, km_left=km_left)
        return run, progress, concern

    def _safe_state(self, state: FlowState) -> None:
        """Pause the machine (a vehicle pulls over); one already paused or stopped stays as it is."""
        driver = self.node.driver
        assert driver is not None
        if driver.job_run(state["job_id"]) == "running":
            try:
                driver.pause()
            except (CommandRejected, DriverError) as exc:
                log.error("machine=%s job=%s cannot reach a safe state: %s", self.node.id, state["job_id"], exc)
        self.node._publish_telemetry()

    def _raise_handoff(self, state: FlowState, concern: Concern, handoff_id: str) -> dict[str, Any]:
        node = self.node
        now = node.clock.now()
        wait_h = node.charter().handoff_wait_h
        record = HandoffRecord(id=handoff_id, machine_id=node.id, job_id=state["job_id"], reason=concern.reason,
                               detail=concern.detail, proposal=concern.proposal,
                               context={**concern.context, "job": state["contract"]["job"], "price": state["contract"]["price"]},
                               state="pending", raised_at=now, wait_until=now + timedelta(hours=wait_h))
        new = True
        if node.operations is not None:
            record, new = node.operations.raise_handoff(record)
        if new:  # first the requester hears the job is held (it keeps the contract if we drop out), then the console
            node._publish_event(state["job_id"], "handoff", progress=min(state.get("progress", 0.0), 1.0),
                                detail=f"{concern.reason}: {concern.detail}")
        node.control.publish_handoff(record)  # retained: the newest state of the handoff, repeating it is harmless
        log.warning("machine=%s job=%s handoff=%s reason=%s detail=%s", node.id, state["job_id"], handoff_id, concern.reason,
                    concern.detail)
        return {"handoff_id": record.id, "reason": record.reason, "detail": record.detail}

    def _carry_on(self, state: FlowState) -> None:
        driver = self.node.driver
        assert driver is not None
        if self._current(state["job_id"]) is None:
            return
        if driver.job_run(state["job_id"]) == "paused":
            try:
                driver.resume()
            except CommandRejected as exc:
                log.warning("machine=%s job=%s resume refused: %s", self.node.id, state["job_id"], exc)
        self.node._publish_event(state["job_id"], "resumed", progress=min(state.get("progress", 0.0), 1.0))

    def _finish(self, state: FlowState, outcome: Outcome) -> None:
        node = self.node
        driver = node.driver
        assert driver is not None
        job_id = state["job_id"]
        run = driver.job_run(job_id)
        contract = self._current(job_id)
        if outcome == "done":
            if run in ("running", "paused"):
                driver.finish_job()  # an operator says it is done: the simulator books the rest
            if contract is not None:
                node._job_done(contract)  # booked before 'done' goes out: the 'paid' answer finds it done
            node._publish_event(job_id, "done", progress=1.0)
            return
        if run in ("running", "paused"):
            try:
                driver.cancel()
            except (CommandRejected, DriverError) as exc:
                log.error("machine=%s job=%s cannot cancel the job on the machine: %s", node.id, job_id, exc)
        if outcome == "closed":
            return
        if contract is not None:
            node._job_given_up(contract)
        if outcome == "aborted":
            node._publish_event(job_id, "aborted", detail=f"an operator aborted the job ({state.get('decision')}); refund it")
        elif outcome == "escalated":
            node._publish_event(job_id, "failed", detail="escalated: no operator took over in time; the runner-up may take it")
        elif outcome == "failed":
            node._publish_event(job_id, "failed", detail="simulated fault" if job_id in node.fail_jobs else
                                f"the job was {state.get('run', 'stopped')} on the machine")

    # -- helpers -------------------------------------------------------------------------------

    def _ended(self, contract: Contract, outcome: str) -> None:
        node = self.node
        contract.waiting = None
        if contract.state == "cancelled":  # the requester closed it meanwhile: nothing to book
            outcome = "closed"
        if node.operations is not None and contract.flow is not None and node.flows.durable:
            node.operations.flow_closed(contract.flow)
        if contract.state == "running":  # ``finish`` did not find it to book (it should have)
            if outcome == "done":
                node._job_done(contract)
            elif outcome != "closed":
                node._job_given_up(contract)

    def _current(self, job_id: str) -> Contract | None:
        """The job's contract if the machine is on it now (not closed, given up or done meanwhile)."""
        followed = self.node._jobs.get(job_id)
        contract = followed.contract if followed is not None else None
        return contract if contract is not None and contract.state == "running" and self.node._running is contract else None

    def _next_tick(self, contract: Contract) -> float:
        node = self.node
        tick = self.tick_s * node.clock.speed
        if not isinstance(node.driver, SimDriver):
            return tick  # a real machine says when it is done: read it every tick
        left = contract.hours * (1 - contract.progress) * 3600
        step = contract.hours * 3600 / max(node.progress_steps, 1)
        return max(min(tick, step, left), MIN_TICK_S) if left > 0 else MIN_TICK_S

    def _progress_event(self, contract: Contract) -> None:
        steps = max(self.node.progress_steps, 1)
        reached = int(contract.progress * steps + 1e-9) / steps
        if contract.waiting == "tick" and 0 < reached < 1 and reached > contract.reported:
            contract.reported = reached
            self.node._publish_event(contract.job.id, "progress", progress=reached)

    def _record(self, handoff_id: str | None) -> HandoffRecord | None:
        ops = self.node.operations
        if handoff_id is None or ops is None:
            return None
        try:
            return ops.handoff(handoff_id)
        except Exception:
            return None

    def _escalate(self, contract: Contract, handoff_id: str) -> None:
        """Nobody took the handoff in the charter's time: stay safe, give the job up to the runner-up."""
        node = self.node
        if contract.waiting != "operator" or contract.handoff != handoff_id:
            return
        record = self._record(handoff_id)
        if record is None or record.state != "pending":
            return
        log.warning("machine=%s job=%s handoff=%s escalated: no operator took over", node.id, contract.job.id, handoff_id)
        node.control.close_handoff(handoff_id, "escalate")
        self.resume(contract, {"decision": "escalate"})
