"""Operator control of a machine: takeover, remote-control commands, handback — on the node's thread.

Commands arrive signed on ``machines/{id}/control``. One counts only when the operator it names was
granted ``operator`` (or ``admin``) on this machine in the ledger, and it is signed by that operator
or by a console (a server granted ``console`` that authenticated them). Except ``takeover``, a
command also needs the operator to hold the machine. From takeover to handback the agent acts on
nothing here: no bids, no accepted awards, no job started or stepped, no tool that changes anything.

Each command is carried out at most once (its id keys the audit record: a redelivery gets the
first answer again), audited (who, when, what, result), answered on ``control/result`` and
remembered in the machine's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from agents.node.book import ContractBook
from agents.node.diary import Diary
from agents.node.holding import Holding
from agents.node.outbox import Outbox
from agents.node.runner import JobRunner
from core.clock import Timeline
from core.errors import CommandRejected, ControlError, DriverError, NotInControl, UnknownHandoff
from hub import topics
from hub.envelope import Envelope
from hub.messages import ControlCommand, ControlResult
from ledger.operations import CommandRecord, HandoffRecord, Operations, Role
from machines.driver import Driver
from memory.signals import operator_item

__all__ = ["ControlDesk"]

log = logging.getLogger("tamc.control")


class ControlDesk:
    def __init__(self, *, machine_id: str, ops: Operations | None, driver: Driver, clock: Timeline, book: ContractBook,
                 runner: JobRunner, holding: Holding, outbox: Outbox, diary: Diary, on_handback: Callable[[], None]) -> None:
        self.machine_id = machine_id
        self.ops = ops
        self.driver = driver
        self.clock = clock
        self.book = book
        self.runner = runner
        self.holding = holding
        self.outbox = outbox
        self.diary = diary
        self.on_handback = on_handback
        """The agent runs the machine again: queued work may start."""

    # -- receiving -------------------------------------------------------------------------------

    def on_command(self, env: Envelope, cmd: ControlCommand) -> None:
        if cmd.machine_id != self.machine_id:
            return
        ops = self.ops
        if ops is None:
            self._reply(cmd, False, f"{self.machine_id} runs without a ledger: it cannot check who its operators are", "NotInControl")
            return
        seen = ops.audited(cmd.command_id)
        if seen is not None:  # carried out already (a redelivery, or a restarted node): the first answer stands
            self._reply(cmd, seen.ok, seen.result, seen.error)
            return
        with self.outbox.acting(cmd.operator):  # what follows is the operator's doing, not the agent's
            self._carry_out(env, cmd, ops)
        if cmd.command == "handback":
            self.on_handback()

    def _carry_out(self, env: Envelope, cmd: ControlCommand, ops: Operations) -> None:
        error = None
        try:
            self._authorize(env.sender, cmd, ops)
            ok, result = True, self._apply(cmd, ops)
        except (ControlError, DriverError) as exc:
            ok, result, error = False, str(exc), type(exc).__name__
        args = cmd.model_dump(mode="json", include={"handoff_id", "name", "value", "point", "decision", "note"}, exclude_none=True)
        ops.audit(CommandRecord(command_id=cmd.command_id, machine_id=self.machine_id, operator=cmd.operator, at=self.clock.now(),
                                command=cmd.command, args=args, ok=ok, result=result, error=error))
        self.diary.store([operator_item(self.machine_id, cmd.operator, cmd.command, args, ok, result)])
        log.info("machine=%s operator=%s command=%s ok=%s result=%s", self.machine_id, cmd.operator, cmd.command, ok, result)
        self._reply(cmd, ok, result, error)

    def _authorize(self, sender: str, cmd: ControlCommand, ops: Operations) -> None:
        machine = self.machine_id
        if not ops.holds(cmd.operator, machine, Role.OPERATOR):
            raise NotInControl(f"{cmd.operator} is not an operator of {machine}: an admin grants the role first")
        if sender != cmd.operator and not ops.holds(sender, machine, Role.CONSOLE):
            raise NotInControl(f"the command is signed by {sender}, neither the operator nor a console trusted to relay it")
        held_by = self.holding.held_by
        if cmd.command != "takeover" and held_by != cmd.operator:
            holder = f"held by {held_by}" if held_by else "run by its agent"
            raise NotInControl(f"{machine} is {holder}: take over before sending {cmd.command}")

    # -- commands --------------------------------------------------------------------------------

    def _apply(self, cmd: ControlCommand, ops: Operations) -> str:
        driver = self.driver
        if cmd.command == "takeover":
            return self._take_over(cmd, ops)
        if cmd.command == "handback":
            return self._hand_back(cmd, ops)
        if cmd.command == "pause":
            driver.pause()
        elif cmd.command == "resume":
            driver.resume()
        elif cmd.command == "cancel":
            driver.cancel()
        elif cmd.command == "set":
            if cmd.name is None or cmd.value is None:
                raise CommandRejected("set needs a name (nozzle, bed…) and a value")
            driver.set(cmd.name, cmd.value)
        elif cmd.command == "move_to":
            if cmd.point is None:
                raise CommandRejected("move_to needs a point {x_km, y_km}")
            driver.move_to(cmd.point)
        self.outbox.telemetry(driver.telemetry())
        t = driver.telemetry()
        return f"{cmd.command} done; {self.machine_id} is {t.state.value}"

    def _take_over(self, cmd: ControlCommand, ops: Operations) -> str:
        machine, holding = self.machine_id, self.holding
        if holding.held_by is not None:
            if holding.held_by == cmd.operator:
                return f"{cmd.operator} already holds {machine}"
            raise NotInControl(f"{machine} is held by {holding.held_by}; they hand it back first")
        handoff_id = cmd.handoff_id
        running = self.book.running
        run = self.runner.flow(running) if running is not None else None
        now = self.clock.now()
        if handoff_id is None and running is not None and run is not None and run.handoff is None:
            # a job under way: hold the machine now (the agent stops acting at once), and let the workflow stop
            # the job safely and raise the handoff; it is attached to this operator when raised (``Holding.attach``)
            holding.take(cmd.operator, now)
            self.runner.resume(running, {"takeover": cmd.operator})
            return f"{cmd.operator} holds {machine}; its job {running.job.id} stops safely and waits for them"
        if handoff_id is None and run is not None:  # (funded and still charging, a job has no workflow yet)
            handoff_id = run.handoff
        if handoff_id is None:
            record, _ = ops.raise_handoff(HandoffRecord(
                id=f"{machine}~{cmd.command_id}", machine_id=machine, job_id=None, reason="operator",
                detail=f"{cmd.operator} took control", proposal="hand back when done", context={}, state="pending",
                raised_at=now, wait_until=now + timedelta(days=365)))
            handoff_id = record.id
        record = ops.handoff(handoff_id)
        if record.machine_id != machine:
            raise UnknownHandoff(f"handoff {handoff_id!r} is not one of {machine}'s")
        record = ops.take(handoff_id, cmd.operator, now)
        holding.take(cmd.operator, record.taken_at)
        holding.publish(record)
        return f"{cmd.operator} holds {machine} (handoff {handoff_id}); the agent stands by"

    def _hand_back(self, cmd: ControlCommand, ops: Operations) -> str:
        machine = self.machine_id
        contract = self.book.running  # a job under way while held is the one the operator holds
        run = self.runner.flow(contract) if contract is not None else None
        if run is None:
            contract = None  # funded and charging, never started: nothing to decide
        handoff_id = run.handoff if run is not None else None
        if contract is None:
            held = [h for h in ops.open_handoffs(machine) if h.state == "taken" and h.operator == cmd.operator]
            handoff_id = held[0].id if held else None
        if cmd.handoff_id is not None and handoff_id is not None and cmd.handoff_id != handoff_id:
            raise UnknownHandoff(f"{cmd.operator} holds handoff {handoff_id}, not {cmd.handoff_id}")
        decision = cmd.decision
        if contract is not None and decision is None:
            raise CommandRejected(f"hand back job {contract.job.id} with a decision: continue, abort (refund) or done")
        self.holding.free()
        if contract is not None:
            # the workflow closes the handoff as it moves on (now, or after the step stopping the job lands)
            self.runner.resume(contract, {"decision": decision, "by": cmd.operator})
            return f"handed back job {contract.job.id}: {decision}"
        if handoff_id is not None:
            self.holding.publish(ops.close(handoff_id, "continue", self.clock.now()))
        return f"handed back {machine}: the agent runs it again"

    def _reply(self, cmd: ControlCommand, ok: bool, result: str, error: str | None = None) -> None:
        running = self.book.running
        run = self.runner.flow(running) if running is not None else None
        self.outbox.publish(topics.control_result(self.machine_id), ControlResult(
            command_id=cmd.command_id, machine_id=self.machine_id, operator=cmd.operator, command=cmd.command, ok=ok,
            result=result, error=error, handoff_id=cmd.handoff_id or (run.handoff if run is not None else None)))
