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
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from core.errors import CommandRejected, ControlError, DriverError, NotInControl, UnknownHandoff
from hub import topics
from hub.envelope import Envelope
from hub.messages import ControlCommand, ControlResult, Handoff
from ledger.operations import CommandRecord, HandoffRecord, Operations, Role
from memory.signals import operator_item

if TYPE_CHECKING:
    from agents.node import MachineNode

__all__ = ["ControlDesk"]

log = logging.getLogger("tamc.control")


class ControlDesk:
    def __init__(self, node: MachineNode) -> None:
        self.node = node
        self.held_by: str | None = None
        """The operator in control of the machine now, or None (the agent runs it)."""
        self.held_since: datetime | None = None

    @property
    def ops(self) -> Operations | None:
        return self.node.operations

    # -- receiving -------------------------------------------------------------------------------

    def on_command(self, env: Envelope, cmd: ControlCommand) -> None:
        node = self.node
        if cmd.machine_id != node.id:
            return
        ops = self.ops
        if ops is None:
            self._reply(cmd, False, f"{node.id} runs without a ledger: it cannot check who its operators are", "NotInControl")
            return
        seen = ops.audited(cmd.command_id)
        if seen is not None:  # carried out already (a redelivery, or a restarted node): the first answer stands
            self._reply(cmd, seen.ok, seen.result, seen.error)
            return
        node.acting_for = cmd.operator  # what follows is the operator's doing, not the agent's
        try:
            self._carry_out(env, cmd, ops)
        finally:
            node.acting_for = None
        if cmd.command == "handback":
            node._maybe_start()  # the agent runs the machine again: queued work may start

    def _carry_out(self, env: Envelope, cmd: ControlCommand, ops: Operations) -> None:
        node = self.node
        error = None
        try:
            self._authorize(env.sender, cmd)
            ok, result = True, self._apply(cmd)
        except (ControlError, DriverError) as exc:
            ok, result, error = False, str(exc), type(exc).__name__
        args = cmd.model_dump(mode="json", include={"handoff_id", "name", "value", "point", "decision", "note"}, exclude_none=True)
        ops.audit(CommandRecord(command_id=cmd.command_id, machine_id=node.id, operator=cmd.operator, at=node.clock.now(),
                                command=cmd.command, args=args, ok=ok, result=result, error=error))
        node._store([operator_item(node.id, cmd.operator, cmd.command, args, ok, result)])
        log.info("machine=%s operator=%s command=%s ok=%s result=%s", node.id, cmd.operator, cmd.command, ok, result)
        self._reply(cmd, ok, result, error)

    def _authorize(self, sender: str, cmd: ControlCommand) -> None:
        ops = self.ops
        assert ops is not None
        node = self.node
        if not ops.holds(cmd.operator, node.id, Role.OPERATOR):
            raise NotInControl(f"{cmd.operator} is not an operator of {node.id}: an admin grants the role first")
        if sender != cmd.operator and not ops.holds(sender, node.id, Role.CONSOLE):
            raise NotInControl(f"the command is signed by {sender}, neither the operator nor a console trusted to relay it")
        if cmd.command != "takeover" and self.held_by != cmd.operator:
            holder = f"held by {self.held_by}" if self.held_by else "run by its agent"
            raise NotInControl(f"{node.id} is {holder}: take over before sending {cmd.command}")

    # -- commands --------------------------------------------------------------------------------

    def _apply(self, cmd: ControlCommand) -> str:
        node = self.node
        driver = node.driver
        if cmd.command == "takeover":
            return self._take_over(cmd)
        if cmd.command == "handback":
            return self._hand_back(cmd)
        if driver is None:
            raise CommandRejected(f"{node.id} has no machine attached yet (it has not joined a market)")
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
        node._publish_telemetry()
        t = driver.telemetry()
        return f"{cmd.command} done; {node.id} is {t.state.value}"

    def _take_over(self, cmd: ControlCommand) -> str:
        ops = self.ops
        node = self.node
        assert ops is not None
        if self.held_by is not None:
            if self.held_by == cmd.operator:
                return f"{cmd.operator} already holds {node.id}"
            raise NotInControl(f"{node.id} is held by {self.held_by}; they hand it back first")
        handoff_id = cmd.handoff_id
        running = node._running
        now = node.clock.now()
        if running is not None and running.flow is None:
            running = None  # funded, still charging: it will not start while the machine is held
        if handoff_id is None and running is not None and running.handoff is None:
            # a job under way: hold the machine now (the agent stops acting at once), and let the workflow stop
            # the job safely and raise the handoff; it is attached to this operator when raised (``attach``)
            self.held_by, self.held_since = cmd.operator, now
            node.runner.resume(running, {"takeover": cmd.operator})
            return f"{cmd.operator} holds {node.id}; its job {running.job.id} stops safely and waits for them"
        if handoff_id is None and running is not None:
            handoff_id = running.handoff
        if handoff_id is None:
            record, _ = ops.raise_handoff(HandoffRecord(
                id=f"{node.id}~{cmd.command_id}", machine_id=node.id, job_id=None, reason="operator",
                detail=f"{cmd.operator} took control", proposal="hand back when done", context={}, state="pending",
                raised_at=now, wait_until=now + timedelta(days=365)))
            handoff_id = record.id
        assert handoff_id is not None
        record = ops.handoff(handoff_id)
        if record.machine_id != node.id:
            raise UnknownHandoff(f"handoff {handoff_id!r} is not one of {node.id}'s")
        record = ops.take(handoff_id, cmd.operator, now)
        self.held_by, self.held_since = cmd.operator, record.taken_at
        self.publish_handoff(record)
        return f"{cmd.operator} holds {node.id} (handoff {handoff_id}); the agent stands by"

    def attach(self, record: HandoffRecord) -> None:
        """Give the operator holding the machine the handoff its workflow just raised for them."""
        ops = self.ops
        if ops is None or self.held_by is None:
            return
        taken = ops.take(record.id, self.held_by, self.node.clock.now())
        self.publish_handoff(taken)

    def _hand_back(self, cmd: ControlCommand) -> str:
        ops = self.ops
        node = self.node
        assert ops is not None
        contract = node._running  # a job under way while held is the one the operator holds
        if contract is not None and contract.flow is None:
            contract = None  # funded and charging, never started: nothing to decide
        handoff_id = contract.handoff if contract is not None else None
        if contract is None:
            held = [h for h in ops.open_handoffs(node.id) if h.state == "taken" and h.operator == cmd.operator]
            handoff_id = held[0].id if held else None
        if cmd.handoff_id is not None and handoff_id is not None and cmd.handoff_id != handoff_id:
            raise UnknownHandoff(f"{cmd.operator} holds handoff {handoff_id}, not {cmd.handoff_id}")
        decision = cmd.decision
        if contract is not None and decision is None:
            raise CommandRejected(f"hand back job {contract.job.id} with a decision: continue, abort (refund) or done")
        self.held_by = self.held_since = None
        if contract is not None:
            # the workflow closes the handoff as it moves on (now, or after the step stopping the job lands)
            node.runner.resume(contract, {"decision": decision, "by": cmd.operator})
            return f"handed back job {contract.job.id}: {decision}"
        if handoff_id is not None:
            self.publish_handoff(ops.close(handoff_id, "continue", node.clock.now()))
        return f"handed back {node.id}: the agent runs it again"

    # -- handoffs --------------------------------------------------------------------------------

    def close_handoff(self, handoff_id: str, decision: str) -> None:
        """Close a handoff: the workflow moved on from it (handed back, escalated, or the job closed)."""
        ops = self.ops
        if ops is not None:
            before = ops.handoff(handoff_id)
            if before.state == "closed":
                return
            record = ops.close(handoff_id, decision[:20], self.node.clock.now())
            self.publish_handoff(record)
        running = self.node._running
        if running is None or running.handoff == handoff_id:
            self.held_by = self.held_since = None

    def publish_handoff(self, record: HandoffRecord) -> None:
        node = self.node
        body = Handoff(handoff_id=record.id, machine_id=record.machine_id, job_id=record.job_id, state=record.state,
                       reason=record.reason, detail=record.detail, proposal=record.proposal, context=record.context,
                       raised_at=int(record.raised_at.timestamp() * 1000), wait_until=int(record.wait_until.timestamp() * 1000),
                       operator=record.operator, decision=record.decision)
        node._publish(topics.handoff(node.id), body, retain=True)

    def _reply(self, cmd: ControlCommand, ok: bool, result: str, error: str | None = None) -> None:
        running = self.node._running
        self.node._publish(topics.control_result(self.node.id), ControlResult(
            command_id=cmd.command_id, machine_id=self.node.id, operator=cmd.operator, command=cmd.command, ok=ok,
            result=result, error=error, handoff_id=cmd.handoff_id or (running.handoff if running is not None else None)))
