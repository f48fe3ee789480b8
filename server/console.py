"""The operator console's server side: commands relayed to machines, answers awaited.

The server holds a ``console`` identity (granted for every machine). An operator's command, once
the API checked their role, goes out on the machine's control topic signed by that identity and
naming the operator; the machine checks both again against the ledger, carries the command out at
most once, audits it and answers. The answer counts only if signed by the machine's own key.
"""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel, Field

from core.errors import CommandRejected, ControlError, DriverError, MachineSilent, NotInControl, UnknownHandoff
from hub import topics
from hub.messages import Command, ControlCommand, Decision
from ledger import Identity, Ledger
from ledger.settlement import machine_owner
from machines.profile import Point
from server.feed import Feed

__all__ = ["Console", "ControlReply", "ControlRequest"]

ANSWER_TIMEOUT_S = 5.0
REFUSALS: dict[str, type[Exception]] = {
    "NotInControl": NotInControl, "CommandRejected": CommandRejected, "UnknownHandoff": UnknownHandoff, "DriverError": DriverError,
}


class ControlRequest(BaseModel):
    """A command for the machine. ``takeover`` (of ``handoff_id``, or unasked), then ``pause``,
    ``resume``, ``cancel``, ``set`` (``name``, ``value``), ``move_to`` (``point``), and ``handback``
    with a ``decision``: continue, abort (the requester is refunded) or done."""

    command: Command
    handoff_id: str | None = Field(default=None, max_length=300)
    name: str | None = Field(default=None, max_length=40)
    value: float | None = None
    point: Point | None = None
    decision: Decision | None = None
    note: str = Field(default="", max_length=500)


class ControlReply(BaseModel):
    command_id: str
    machine_id: str
    command: str
    result: str
    handoff_id: str | None = None
    answered_ms: float
    """From sending the command to the machine's signed answer."""


class Console:
    def __init__(self, feed: Feed, identity: Identity, ledger: Ledger, *, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.feed = feed
        self.identity = identity
        self.ledger = ledger
        self.timeout_s = timeout_s

    def send(self, operator: str, machine_id: str, request: ControlRequest) -> ControlReply:
        """Relay ``operator``'s command and wait for the machine's answer; a refusal raises the
        machine's own error (``NotInControl``, ``CommandRejected``…) with its message."""
        command_id = uuid.uuid4().hex
        body = ControlCommand(command_id=command_id, machine_id=machine_id, operator=operator,
                              **request.model_dump(exclude_none=True))
        started = time.perf_counter()
        self.feed.expect(command_id)
        self.feed.hub.send(topics.control(machine_id), body, self.identity)
        got = self.feed.answer(command_id, self.timeout_s)
        owner = machine_owner(self.ledger, machine_id)
        if got is None or got[0] != owner:
            raise MachineSilent(f"{machine_id} did not answer {request.command} within {self.timeout_s:g} s: it may be offline; "
                                f"the command (id {command_id}) is carried out at most once if it arrives later")
        result = got[1]
        if not result.ok:
            raise REFUSALS.get(result.error or "", ControlError)(result.result)
        return ControlReply(command_id=command_id, machine_id=machine_id, command=result.command, result=result.result,
                            handoff_id=result.handoff_id, answered_ms=round((time.perf_counter() - started) * 1000, 2))
