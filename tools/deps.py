"""What a tool may reach: the machine it serves, its ledger, hub, memory and governance.

``MachineDeps`` is the ``RunContext`` dependency of every toolset. The machine is reached through
``MachinePort``, a narrow protocol the market node implements (and a standalone machine does in
the chat command and in tests), so tools never touch a node's internals. Every action a tool takes
or refuses is appended to ``actions``: the audit trail of one agent run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from core.clock import Clock, WallClock
from core.errors import PolicyRefused
from machines.driver import Telemetry
from machines.profile import MachineProfile, Policy
from pricing.bids import BidRecord, OpenCall
from pricing.rules import Decision, MachineStatus, MarketContext
from prompts import untrusted

if TYPE_CHECKING:
    from hub.transport import Hub
    from ledger import Identity, Ledger
    from ledger.governance import Governance
    from memory import MachineMemory, MemoryRecord

__all__ = ["MachineDeps", "MachinePort", "ToolAction"]

class ToolAction(BaseModel):
    """One thing a tool did or refused, for the run's audit trail."""

    tool: str
    ok: bool
    detail: str
    code: str = ""
    at: datetime
    cause: str = ""
    """Who the action is attributed to: the stakeholder (or the agent) alone, or, once the model had
    read outside text in the run, the agent after reading it (``MachineDeps.cause``)."""


class MachinePort(Protocol):
    """The machine as tools see it."""

    @property
    def profile(self) -> MachineProfile: ...

    @property
    def market(self) -> MarketContext: ...

    def telemetry(self) -> Telemetry | None: ...

    def telemetry_history(self) -> list[Telemetry]: ...

    def machine_status(self) -> MachineStatus: ...

    def open_call(self, job_id: str) -> OpenCall | None: ...

    def open_calls(self) -> list[OpenCall]: ...

    def rule_decision(self, call: OpenCall) -> Decision:
        """The rule engine's decision on ``call`` with the machine's state and schedule now."""

    def bid_history(self) -> list[BidRecord]: ...

    def submit_bid(self, job_id: str, price: int, eta_h: float, reason: str, path: str) -> None:
        """Publish a bid that the bidding tool has already checked against policy."""

    def decline_call(self, job_id: str, reason: str) -> None:
        """Do not bid on this call."""

    @property
    def held_by(self) -> str | None:
        """The operator in control of the machine now, or None when its agent runs it."""


@dataclass
class MachineDeps:
    machine: MachinePort
    ledger: Ledger | None = None
    hub: Hub | None = None
    memory: MachineMemory | None = None
    governance: Governance | None = None
    identity: Identity | None = None
    """The machine's own key: what signs the ballots it casts with the shares it holds."""
    actor: str = "agent"
    """Who is asking: ``agent`` on its own, or the stakeholder in a chat."""
    clock: Clock = field(default_factory=WallClock)
    """The market's time, as the machine reads it: deadlines, periods, the actions' times."""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Makes a repeated tool call within one run idempotent (a model that calls a payment twice pays once)."""
    actions: list[ToolAction] = field(default_factory=list)
    recalled: dict[str, MemoryRecord] = field(default_factory=dict)
    """Memory records the run read, by ref: what an answer may cite."""
    words: str = ""
    """What the stakeholder said in this run (their question): the only text stored as theirs."""
    read: list[str] = field(default_factory=list)
    """Where the outside text the model was shown in this run came from (``outside``)."""

    @property
    def policy(self) -> Policy:
        return self.machine.profile.policy

    @property
    def machine_id(self) -> str:
        return self.machine.profile.id

    def hands_off(self) -> None:
        """Refuse (``PolicyRefused``, code ``policy.operator``) while a person holds the machine: from
        takeover to handback nothing but the operator's commands changes it, whoever asks a tool."""
        operator = self.machine.held_by
        if operator is not None:
            raise PolicyRefused("policy.operator", f"{operator} holds {self.machine_id} by remote control; "
                                                   "nothing changes it but their commands until they hand it back")

    def record(self, tool: str, ok: bool, detail: str, code: str = "") -> None:
        self.actions.append(ToolAction(tool=tool, ok=ok, detail=detail, code=code, at=self.clock.now(), cause=self.cause))

    def outside(self, value: object, source: str) -> str:
        """``value`` fenced as data from ``source`` (``prompts.untrusted``), noting that the model read it."""
        self.heard(source)
        return untrusted(value, source)

    def heard(self, source: str) -> None:
        if source not in self.read:
            self.read.append(source)

    @property
    def cause(self) -> str:
        """Who what the model does now is attributed to: whoever asked (the stakeholder, or the agent on
        its own) while it has read nothing from outside; after that, the agent acting on what it read —
        never the stakeholder, who did not write that text."""
        if not self.read:
            return self.actor
        shown = ", ".join(self.read[:3]) + (f" and {len(self.read) - 3} more" if len(self.read) > 3 else "")
        return f"agent:{self.machine_id} for {self.actor}, after reading {shown}"[:300]

    def said_it(self, text: str) -> bool:
        """Whether the stakeholder said ``text`` themselves in this run (what may be stored as their fact)."""
        def norm(s: str) -> str:
            return " ".join(s.lower().split()).strip(" .!?")

        return bool(self.words) and norm(text) in norm(self.words)
